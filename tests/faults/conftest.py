"""Fixtures of the fault tests: a fresh faulty provider per test, asyncio unless a test asks
for trio too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .provider import FaultyProvider


@pytest.fixture
def anyio_backend() -> str:
    """asyncio; the tests of recovery, silence and stream restarts run on trio as well."""
    return "asyncio"


@pytest.fixture
def provider() -> Iterator[FaultyProvider]:
    """A faulty provider with no model yet; its held connections are released at the end."""
    server = FaultyProvider().start()
    try:
        yield server
    finally:
        server.stop()
