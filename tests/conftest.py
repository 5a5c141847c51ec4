"""Shared fixtures: both async backends, a file log for `just verify`, fakes."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from storage.pg_server import Cluster, ClusterUnavailable, fresh_database, shared_cluster

PACKAGE = "devs.risks.multi_model_failover"
VERIFY_LOG_VAR = "MULTI_MODEL_FAILOVER_TEST_LOG"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def event_log(request: pytest.FixtureRequest) -> str | None:
    """Where a seed test writes its events: a file of its own in the folder named by
    MULTI_MODEL_FAILOVER_TEST_LOG (set by `just verify`), else None (in-memory SQLite)."""
    folder = os.environ.get(VERIFY_LOG_VAR)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return str(Path(folder) / f"{name}.sqlite3")


@pytest.fixture
def log_records() -> Iterator[list[dict[str, object]]]:
    """The package's loguru records while the test runs (the library is silent otherwise)."""
    records: list[dict[str, object]] = []
    logger.enable(PACKAGE)
    handler = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(handler)
        logger.disable(PACKAGE)


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
    """The test process's throwaway PostgreSQL server (started once, removed at exit).

    Tests that need it skip, saying why, where no server can be started (no binaries, no
    psycopg, no ``postgres`` user under root); see ``storage/pg_server.py``.
    """
    try:
        return shared_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The superuser URL of a new, empty database."""
    return fresh_database(pg_cluster)
