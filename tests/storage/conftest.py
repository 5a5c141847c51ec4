"""Fixtures of the storage tests: a throwaway PostgreSQL server and a fresh database per test.

Tests that need PostgreSQL skip, saying why, where no server can be started (no binaries, no
psycopg, no ``postgres`` user under root). See ``pg_server`` for reuse from other folders.
"""

from __future__ import annotations

import pytest

from .pg_server import Cluster, ClusterUnavailable, fresh_database, shared_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
    """The test process's PostgreSQL server (started once, removed at exit)."""
    try:
        return shared_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The superuser URL of a new, empty database."""
    return fresh_database(pg_cluster)
