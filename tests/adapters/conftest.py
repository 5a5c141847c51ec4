"""Fixtures of the adapter tests: real HTTP servers on 127.0.0.1, shared and reset per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fake_provider import FakeProvider


@pytest.fixture(scope="session")
def provider_pool() -> Iterator[list[FakeProvider]]:
    """Servers started once for the session (starting one per test is most of its cost)."""
    pool: list[FakeProvider] = []
    yield pool
    for provider in pool:
        provider.stop()


@pytest.fixture
def make_provider(provider_pool: list[FakeProvider]) -> Iterator[Callable[[], FakeProvider]]:
    """As many fake providers as a test needs, each with no script and no requests yet."""
    used = 0

    def make() -> FakeProvider:
        nonlocal used
        if used == len(provider_pool):
            provider_pool.append(FakeProvider().start())
        provider = provider_pool[used]
        used += 1
        provider.reset()
        return provider

    yield make
    for provider in provider_pool[:used]:
        provider.release()


@pytest.fixture
def provider(make_provider: Callable[[], FakeProvider]) -> FakeProvider:
    """One fake provider."""
    return make_provider()
