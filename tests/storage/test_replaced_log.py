"""A log file replaced under a process that follows it (deleted and recreated, or archived and
started afresh): the follower notices the other log and reads it from its start (issue #12)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devs.risks.multi_model_failover.core.events import Maintenance
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.livelog import LiveLog
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .contract import attempt

pytestmark = pytest.mark.anyio


def fill(path: Path, call_id: str, count: int) -> None:
    """``count`` events appended by another writer."""
    with SQLiteEventStore(path, durability="buffered") as writer:
        for n in range(1, count + 1):
            writer.append(attempt(call_id, n))


def log_id(path: Path) -> str | None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    return None if row is None else str(row[0])


def forget_log_id(path: Path) -> None:
    """Make ``path`` look like a log written before logs had an id."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'log_id'")


def test_each_new_log_gets_its_own_id(tmp_path: Path) -> None:
    for name in ("a.sqlite3", "b.sqlite3"):
        SQLiteEventStore(tmp_path / name).close()
    first, second = log_id(tmp_path / "a.sqlite3"), log_id(tmp_path / "b.sqlite3")
    assert first is not None
    assert second is not None
    assert first != second


@pytest.mark.parametrize("legacy", [False, True], ids=["log-id", "legacy-no-id"])
@pytest.mark.parametrize("how", ["deleted", "archived"])
def test_a_follower_reads_a_replaced_log_from_its_start(
    tmp_path: Path, how: str, legacy: bool
) -> None:
    path = tmp_path / "events.sqlite3"
    fill(path, "old", 5)
    if legacy:
        forget_log_id(path)
    follower = SQLiteEventStore(path)
    assert follower.read_others(0)[1] == 5
    if how == "deleted":
        path.unlink()
    else:
        os.replace(path, tmp_path / "archive.sqlite3")
    fill(path, "new", 2)
    if legacy:
        forget_log_id(path)
    events, cursor = follower.read_others(5)
    assert [(e.call_id, e.seq) for e in events] == [("new", 1), ("new", 2)]
    assert (cursor, follower.resets) == (2, 1)
    assert follower.read_others(cursor) == ([], 2)
    fill(path, "new", 1)
    rows, cursor = follower.read_since(2)
    assert ([e.seq for e, _ in rows], cursor, follower.resets) == ([3], 3, 1)
    follower.close()


def test_the_same_log_put_back_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    fill(path, "old", 3)
    follower = SQLiteEventStore(path)
    assert follower.read_others(0)[1] == 3
    shutil.copyfile(path, tmp_path / "copy.sqlite3")  # e.g. restored from a backup
    os.replace(tmp_path / "copy.sqlite3", path)
    assert follower.read_others(3) == ([], 3)
    assert follower.resets == 0
    follower.close()


def test_a_moved_log_is_not_said_to_be_gone(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="buffered")
    for n in range(1, 4):
        store.append(attempt("before", n))
    assert store.flush()
    os.replace(path, tmp_path / "archive.sqlite3")
    store.append(attempt("after", 1))
    assert store.flush()
    assert store.last_error == (
        "the log file was moved or deleted; its 3 event(s) are no longer at that path"
    )
    assert not any("gone" in str(r["message"]) for r in log_records)
    store.close()
    with SQLiteEventStore(tmp_path / "archive.sqlite3", create=False) as archive:
        assert [e.call_id for e in archive.read()] == ["before"] * 3


async def test_the_live_view_follows_a_replaced_log(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    fill(path, "old", 5)
    store = SQLiteEventStore(path)
    live = LiveLog(store, shared_health=True)
    live.load()
    assert live.cursor == 5
    os.replace(path, tmp_path / "archive.sqlite3")
    with SQLiteEventStore(path) as operator:
        operator.append(
            Maintenance(at=datetime.now(UTC), model_id="primary", on=True, reason="r", by="ops")
        )
    assert await live.follow() == 1
    assert live.snap.state_of("primary").state is HealthState.MAINTENANCE
    assert live.cursor == 1
    await store.aclose()
