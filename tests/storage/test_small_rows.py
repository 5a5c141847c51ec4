"""Small rows (issue 13): an event's body holds only what no column holds, ``at`` is an
integer, writers are named once; logs written by the older row format stay readable and
writable in their own format."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings

from devs.risks.multi_model_failover import MultiModelFailover, replay
from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    CallStarted,
    EngineStarted,
    Event,
    decode,
)
from devs.risks.multi_model_failover.storage._group_commit import (
    at_micros,
    compact,
    event_text,
    micros_text,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .contract import any_event

pytestmark = pytest.mark.anyio

AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
COLUMNS = {"seq", "type", "at", "call_id", "model_id"}


class Answers:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    async def call(self, prompt: str) -> str:
        return "ok"

    async def health_check(self) -> bool:
        return True


def rows(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(
            "SELECT seq, type, at, call_id, model_id, writer, body FROM events ORDER BY seq"
        ).fetchall()


@settings(max_examples=300, deadline=None)
@given(event=any_event)
def test_a_small_row_gives_back_the_whole_event(event: Event) -> None:
    tag, at, call_id, model_id, body = compact(event)
    assert isinstance(at, int)
    fields = json.loads(body)
    assert not COLUMNS & set(fields)
    text = event_text(7, tag, at, call_id, model_id, body.decode())
    assert decode(text) == msgspec.structs.replace(event, seq=7)


def test_times_keep_their_microseconds_and_their_instant() -> None:
    local = AT.astimezone(timezone(timedelta(hours=-5)))
    assert at_micros(local) == at_micros(AT)
    assert micros_text(at_micros(AT)) == "2026-03-01T12:00:00.123456Z"
    assert micros_text(at_micros(datetime(27, 1, 1, tzinfo=UTC))) == "0027-01-01T00:00:00.000000Z"
    # A naive time is taken as UTC rather than refused.
    assert at_micros(AT.replace(tzinfo=None)) == at_micros(AT)


async def test_the_body_holds_only_what_no_column_holds(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    async with MultiModelFailover({"primary": Answers("primary")}, event_store=str(path)) as fo:
        await fo.call("hello")
    stored = rows(path)
    assert stored, "the engine wrote nothing"
    for _seq, _type, at, _call_id, _model_id, writer, body in stored:
        assert isinstance(at, int)
        assert isinstance(writer, int)
        assert not COLUMNS & set(json.loads(str(body)))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (name,) = conn.execute("SELECT name FROM writers").fetchone()
    assert name == fo.event_store.writer
    assert replay(str(path)).metrics.calls_succeeded == 1


def test_fields_without_a_column_stay_readable_with_json_extract(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with SQLiteEventStore(path) as store:
        store.append(
            AttemptFailed(
                at=AT,
                call_id="c-1",
                model_id="primary",
                attempt=1,
                latency=0.5,
                error_kind=ErrorKind.SERVER,
                message="overloaded",
            )
        )
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        found = conn.execute(
            "SELECT call_id, model_id, json_extract(body, '$.error_kind'), "
            "json_extract(body, '$.message') FROM events WHERE type = 'attempt_failed'"
        ).fetchall()
    assert found == [("c-1", "primary", "server", "overloaded")]


async def test_the_hot_path_costs_at_most_160_bytes_an_event_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="buffered", snapshot_every=None)
    clients = {"gpt-4o-mini": Answers("gpt-4o-mini"), "claude-haiku-4-5": Answers("c")}
    fo = MultiModelFailover(clients, event_store=store)
    for _ in range(5_000):
        await fo.call("hello")
    await fo.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    assert events > 20_000
    assert os.path.getsize(path) == pages * size  # noqa: ASYNC240 - a test
    assert (pages - free) * size / events <= 160


def old_log(path: Path) -> None:
    """A log as the first row format wrote it: ``at`` as text, the whole event in the body."""
    started = EngineStarted(at=AT, models=("primary",))
    call = CallStarted(at=AT + timedelta(seconds=1), call_id="c-1", order=("primary",))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
            INSERT INTO meta VALUES ('schema_version', '1'), ('log_id', 'abc');
            CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, at TEXT NOT NULL,
                call_id TEXT, model_id TEXT, writer TEXT NOT NULL, body TEXT NOT NULL);
            CREATE INDEX events_call_id ON events (call_id);
            CREATE INDEX events_at ON events (at);
            """
        )
        for seq, event in enumerate((started, call), 1):
            body = msgspec.json.encode(msgspec.structs.replace(event, seq=seq)).decode()
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    event.type,
                    event.at.isoformat(timespec="microseconds"),
                    getattr(event, "call_id", None),
                    None,
                    "old-writer",
                    body,
                ),
            )


def test_a_log_of_the_older_row_format_is_read_and_extended_in_its_own_format(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    old_log(path)
    with SQLiteEventStore(path) as store:
        assert not store.compact
        assert [event.type for event in store.read()] == ["engine_started", "call_started"]
        store.append(CallStarted(at=AT + timedelta(seconds=2), call_id="c-2", order=("primary",)))
        assert store.flush()
        since = list(store.read(where=f"at >= {store.at_param(AT + timedelta(seconds=1))!r}"))
        assert [event.seq for event in since] == [2, 3]
    third = rows(path)[2]
    assert third[2] == (AT + timedelta(seconds=2)).isoformat(timespec="microseconds")
    assert str(third[6]).startswith('{"seq":3,')
    assert replay(str(path)).metrics.calls == 2


def test_at_param_and_at_time_speak_the_log_s_format(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with SQLiteEventStore(path) as store:
        store.append(CallStarted(at=AT, call_id="c-1", order=()))
        assert store.flush()
        (stored,) = store.query("SELECT at FROM events")[0]
        assert stored == store.at_param(AT)
        assert store.at_time(stored) == AT
        assert store.query("SELECT count(*) FROM events WHERE at >= ?", (store.at_param(AT),)) == [
            (1,)
        ]
    old = tmp_path / "old.sqlite3"
    old_log(old)
    with SQLiteEventStore(old, create=False) as store:
        (stored,) = store.query("SELECT at FROM events WHERE seq = 1")[0]
        assert store.at_time(stored) == AT


def test_two_writers_of_one_log_get_ids_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with (
        SQLiteEventStore(path, writer="replica-a") as a,
        SQLiteEventStore(path, writer="replica-b") as b,
    ):
        a.append(CallStarted(at=AT, call_id="a-1", order=()))
        b.append(CallStarted(at=AT, call_id="b-1", order=()))
        assert a.flush()
        assert b.flush()
        assert a.writer_key != b.writer_key
        others, _ = a.read_others(0)
        assert [event.call_id for event in others if isinstance(event, CallStarted)] == ["b-1"]
        mine = [event for event, own in a.read_since(0)[0] if own]
        assert [getattr(event, "call_id", None) for event in mine] == ["a-1"]
