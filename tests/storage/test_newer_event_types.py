"""A log a newer version wrote (events of types this version does not know): the engine
starts on it and ``replay`` reads it, skipping those events and counting them (issue #12)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest

from devs.risks.multi_model_failover import MultiModelFailover, replay
from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .contract import newer_event

pytestmark = pytest.mark.anyio


class Echo:
    """A model client that answers every prompt."""

    def call(self, prompt: str) -> str:
        return f"echo {prompt}"

    def health_check(self) -> bool:
        return True


def add_newer_event(path: Path) -> int:
    """Append an event of a type this version does not know; returns its seq."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        conn.execute(
            "INSERT INTO events (seq, type, at, writer, body) VALUES (?, ?, ?, ?, ?)",
            (last + 1, "brand_new_event", "2026-01-01T00:00:00+00:00", "v2", newer_event(last + 1)),
        )
    return int(last) + 1


async def one_call(path: Path) -> None:
    fo = MultiModelFailover({"a": Echo()}, event_store=str(path))
    try:
        assert await fo.call("hi") == "echo hi"
    finally:
        await fo.aclose()


async def test_the_engine_starts_on_a_log_with_newer_events(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    await one_call(path)
    add_newer_event(path)
    await one_call(path)  # refused to start before: "row seq=... is not a valid event"
    snapshot = replay(path)
    assert snapshot.metrics.calls == 2
    assert snapshot.metrics.calls_succeeded == 2


def test_replay_of_a_store_counts_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    anyio.run(one_call, path)
    seq = add_newer_event(path)
    with SQLiteEventStore(path, create=False) as store:
        assert replay(store).metrics.calls == 1
        assert store.unknown == {"brand_new_event": 1}
        store.skip_unknown = False
        with pytest.raises(EventLogError, match=rf"seq={seq} is a 'brand_new_event' event"):
            replay(store)
