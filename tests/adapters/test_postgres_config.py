"""A fleet configured from a document: a postgresql:// log whose password comes from a variable.

Skipped, saying why, where no PostgreSQL server can be started.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devs.risks.multi_model_failover import MultiModelFailover, replay
from devs.risks.multi_model_failover.adapters.config import ENV_VAR

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")

pytestmark = pytest.mark.anyio

PASSWORD = "Fl33t-pa55word-4-tests"  # noqa: S105 - a throwaway test role's password


@pytest.fixture
def role_url(pg_url: str) -> str:
    """``pg_url`` as a role that must give a password (no password in the URL)."""
    database = pg_url.rsplit("/", 1)[1]
    role = f"app_{database}"  # roles belong to the whole cluster: one per test database
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT CREATE ON DATABASE {database} TO {role}")
    return pg_url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


def document(url: str, **section: Any) -> str:
    base = {
        "clients": [{"id": "local", "kind": "callable", "target": "tests.test_config:echo"}],
        "event_log": url,
        "event_log_password_env": "FAILOVER_PG_PASSWORD",
        "replica": "api-1",
    }
    return json.dumps({"multi_model_failover": base | section})


async def test_the_password_comes_from_its_variable_and_never_shows(
    role_url: str, log_records: list[dict[str, Any]]
) -> None:
    env = {ENV_VAR: document(role_url), "FAILOVER_PG_PASSWORD": PASSWORD}
    fo = MultiModelFailover.from_config(env=env)
    assert await fo.call("hello") == "echo: hello"
    assert fo.event_store.writer == "api-1"
    assert PASSWORD not in repr(fo.event_store)
    await fo.aclose()
    role = role_url.split("//", 1)[1].split("@", 1)[0]
    assert replay(role_url.replace(f"{role}@", f"{role}:{PASSWORD}@")).metrics.calls == 1
    assert not [r for r in log_records if PASSWORD in str(r["message"])]


def test_a_wrong_password_is_one_clear_error_without_the_password(role_url: str) -> None:
    env = {ENV_VAR: document(role_url), "FAILOVER_PG_PASSWORD": "not-the-password-123"}
    with pytest.raises(Exception, match="password authentication failed") as caught:
        MultiModelFailover.from_config(env=env)
    assert "not-the-password-123" not in str(caught.value)
