"""Hostile tests for the staged start-up load (``Snapshots.loading``, ``Loading``: read on a
worker thread, folded on the event loop in slices), the paced background folds (``Pace``) and
the writer's registration after the durability PRAGMAs.

The tests under "defects" fail on the code they were written against (``ec1d662`` to
``b97fccc``); those under "what held" guard edges that the change kept.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from tests.core.fakes import FakeModelClient
from tests.core.test_startup import PagedStore, cancelled_mid_load

from devs.risks.multi_model_failover import (
    EngineClosedError,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.core import events as ev
from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.core.projections import fold
from devs.risks.multi_model_failover.storage.snapshots import _PAGE, _Stopped
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 3, 1, tzinfo=UTC)
UNKNOWN = "types this version does not know"


def a_call(n: int) -> list[ev.Event]:
    call, at = f"c-{n}", T0 + timedelta(milliseconds=n)
    return [
        ev.CallStarted(at=at, call_id=call, order=("a",)),
        ev.AttemptStarted(at=at, call_id=call, model_id="a", attempt=1),
        ev.AttemptSucceeded(at=at, call_id=call, model_id="a", attempt=1, latency=0.01),
        ev.CallSucceeded(at=at, call_id=call, model_id="a", attempts=1, failovers=0, latency=0.01),
    ]


def append_calls(path: Path, calls: int, *, first: int = 0, started: bool = False) -> int:
    """``calls`` calls appended to the log at ``path`` (no snapshot); its last seq."""
    with SQLiteEventStore(path, durability="buffered", snapshot_every=None) as store:
        if started:
            store.append(ev.EngineStarted(at=T0, models=("a", "b")))
        for n in range(first, first + calls):
            for event in a_call(n):
                store.append(event)
        store.flush()
        return store.last_seq()


def raw_row(path: Path, tag: str, body: Callable[[int], str]) -> int:
    """A row written behind the library's back (a newer version's event, a damaged one)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        seq = int(last) + 1
        conn.execute(
            "INSERT INTO events (seq, type, at, writer, body) VALUES (?, ?, ?, ?, ?)",
            (seq, tag, "2026-01-01T00:00:00+00:00", "v2", body(seq)),
        )
    return seq


def newer_event(seq: int) -> str:
    return f'{{"seq":{seq},"type":"brand_new_event","at":"2026-01-01T00:00:00+00:00"}}'


def warnings_about_unknown(records: list[dict[str, object]]) -> list[str]:
    return [str(r["message"]) for r in records if UNKNOWN in str(r["message"])]


def engine_on(store: object) -> MultiModelFailover:
    return MultiModelFailover(
        [FakeModelClient(model_id="a"), FakeModelClient(model_id="b")],
        {"jitter": "none", "base_delay": 0},
        health_check_interval=3600,
        event_store=store,  # type: ignore[arg-type]
        rng=random.Random(7),
    )


# -- defects ---------------------------------------------------------------------------------


def test_a_load_that_fails_on_a_damaged_row_still_says_what_it_skipped(
    tmp_path: Path, log_records: list[dict[str, object]]
) -> None:
    """``read`` warned (in its ``finally``) about the events of unknown types it had skipped,
    also when a later row raised. ``Loading`` warns only in ``finish``: a load that raises
    (a damaged row, a database error, a periodic snapshot told to stop) drops the warning.
    And it is dropped for good: the store counts each unknown seq once (``_unknown_seqs``),
    so no later read of the log ever warns about that event again."""
    path = tmp_path / "events.sqlite3"
    append_calls(path, 10, started=True)
    raw_row(path, "brand_new_event", newer_event)
    damaged = raw_row(path, "maintenance", lambda seq: "{not json")
    with SQLiteEventStore(path, create=False) as store:
        with pytest.raises(EventLogError, match=rf"seq={damaged} is not a valid event"):
            store.snapshots.load()
        assert store.unknown == {"brand_new_event": 1}
        assert store.snapshots.load(lenient=True)[0].metrics.calls == 10
    assert len(warnings_about_unknown(log_records)) == 1, (
        "an event of an unknown type was skipped and counted, and never reported"
    )


async def test_a_start_cancelled_mid_load_still_says_what_it_skipped(
    tmp_path: Path, log_records: list[dict[str, object]]
) -> None:
    """The same through an engine: its first use is cancelled between two slices of the load
    (after the page holding the newer version's event was folded), the next use loads the log
    again. Before the change the load could not be cancelled half-way and warned once; now
    nothing ever says that an event was skipped (``store.unknown`` counts it)."""
    path = tmp_path / "events.sqlite3"
    append_calls(path, 100, started=True)
    raw_row(path, "brand_new_event", newer_event)  # in the first page
    append_calls(path, 500, first=100)  # 2,402 events: three pages
    store = PagedStore(path, snapshot_every=None)
    fo = engine_on(store)

    async def call() -> None:
        await fo.call("hi")

    await cancelled_mid_load(store, call)
    store.on_page = None
    await fo.call("hi")
    assert fo.metrics().calls == 601
    await fo.aclose()
    assert store.unknown == {"brand_new_event": 1}
    assert len(warnings_about_unknown(log_records)) == 1, (
        "the start-up skipped an event of an unknown type and never said so"
    )


async def test_a_load_taken_over_after_a_cancelled_one_does_not_read_a_closed_store(
    tmp_path: Path,
) -> None:
    """``aclose`` waits for a load under way (``LiveLog.settle``) so that the store is not
    closed under it. A load used to be one uncancellable worker-thread call: once it began it
    ended loaded, and a task waiting for it found the log loaded. Now a load can be cancelled
    between slices: a task that waited for it (a second call) then starts a load of its own,
    while ``aclose`` (which waited for the same event) goes on and closes the store. That load
    reads the closed store: on SQLite each read re-opens the connection ``close`` released
    (``_reopen_for_reading``), left open after the close."""
    path = tmp_path / "events.sqlite3"
    append_calls(path, 600, started=True)
    store = PagedStore(path, snapshot_every=None)
    fo = engine_on(store)
    paging = anyio.Event()
    release = threading.Event()
    close_done = threading.Event()

    def first_load(after: int) -> None:
        anyio.from_thread.run_sync(paging.set)
        release.wait(5)

    def later_loads(after: int) -> None:
        close_done.wait(5)  # (never called before the change: one load, uncancelled)

    store.on_page = first_load
    scope = anyio.CancelScope()

    async def first_call() -> None:
        with scope:
            await fo.call("hi")

    async def second_call() -> None:
        with contextlib.suppress(EngineClosedError):
            await fo.call("hi")

    async def close() -> None:
        await fo.aclose()
        close_done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(first_call)
        await paging.wait()  # the first call's load is under way (its second page)
        group.start_soon(second_call)  # waits for that load
        group.start_soon(close)  # waits for that load too (settle)
        await anyio.sleep(0.1)
        store.on_page = later_loads
        scope.cancel()  # the first call gives up
        release.set()
    assert store.closed
    assert store.reads_after_close == [], "a load read the store after aclose closed it"


# -- what held -------------------------------------------------------------------------------


def pad_to(path: Path, total: int) -> int:
    """Append maintenance events until the log holds ``total`` events; its last seq."""
    with SQLiteEventStore(path, durability="buffered", snapshot_every=None) as store:
        store.flush()
        n = 0
        while store.last_seq() + n < total:
            store.append(ev.Maintenance(at=T0, model_id="b", on=n % 2 == 0, reason=f"r{n}"))
            n += 1
        store.flush()
        return store.last_seq()


@pytest.mark.parametrize("extra", [-1, 0, 1, _PAGE])
def test_a_load_ending_at_a_page_boundary_folds_every_event_once(
    tmp_path: Path, extra: int
) -> None:
    path = tmp_path / "events.sqlite3"
    append_calls(path, (_PAGE - 8) // 4, started=True)
    last = pad_to(path, _PAGE + extra)
    with SQLiteEventStore(path, create=False) as store:
        whole = fold(list(store.read()))
        steps = store.snapshots.loading()
        steps.begin()
        while steps.read():
            while not steps.fold(0.0):
                pass
        assert steps.finish() == (whole, last)
        assert store.snapshots.load() == (whole, last)
        for upto in (_PAGE - 1, _PAGE, _PAGE + 1):
            if upto <= last:
                part = fold([e for e in store.read() if e.seq <= upto])
                assert store.snapshots.load(upto) == (part, upto)


async def test_a_start_up_on_a_log_with_a_newer_event_says_so_once(
    tmp_path: Path, log_records: list[dict[str, object]]
) -> None:
    path = tmp_path / "events.sqlite3"
    append_calls(path, 100, started=True)
    raw_row(path, "brand_new_event", newer_event)
    append_calls(path, 500, first=100)
    store = SQLiteEventStore(path, snapshot_every=None)
    async with engine_on(store) as fo:
        await fo.call("hi")
        assert fo.metrics().calls == 601
    assert store.unknown == {"brand_new_event": 1}
    assert len(warnings_about_unknown(log_records)) == 1


def test_a_lenient_load_counts_a_damaged_row_once_and_folds_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    append_calls(path, 300, started=True)  # the damaged row in the second page
    raw_row(path, "maintenance", lambda seq: "{not json")
    last = append_calls(path, 300, first=300)
    with SQLiteEventStore(path, create=False) as store:
        snap, cursor = store.snapshots.load(lenient=True)
        assert (snap.metrics.calls, cursor, store.skipped) == (600, last, 1)
        assert replay(store, lenient=True, from_start=True) == snap


def test_a_periodic_snapshot_told_to_stop_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    append_calls(path, 600, started=True)
    with SQLiteEventStore(path, create=False, snapshot_every=1000) as store:
        snapshots = store.snapshots
        snapshots._thread = threading.current_thread()  # as on the snapshot thread
        snapshots._stop.set()  # the store is closing
        try:
            with pytest.raises(_Stopped):
                snapshots.take("periodic")
        finally:
            snapshots._thread = None
        assert store.query("SELECT count(*) FROM snapshots") == [(0,)]


def test_a_writer_is_registered_once_the_log_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with SQLiteEventStore(path, writer="w-1", durability="buffered") as store:
        store.append(ev.EngineStarted(at=T0, models=("a",)))
        store.flush()
        assert store.query("PRAGMA journal_mode") == [("wal",)]
        assert store.query("SELECT name FROM writers WHERE id = ?", (store.writer_key,)) == [
            ("w-1",)
        ]
    with SQLiteEventStore(path, writer="w-1") as again:
        assert again.writer_key == store.writer_key
        assert [name for _, name in again.read_written(after=0, upto=1)] == ["w-1"]


async def test_an_engine_on_a_shared_log_loads_it_in_pages(pg_url: str) -> None:
    from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
        PostgresEventStore,
    )

    with PostgresEventStore(pg_url, durability="buffered", snapshot_every=None) as writer:
        writer.append(ev.EngineStarted(at=T0, models=("a", "b")))
        for n in range(2 * _PAGE // 4):
            for event in a_call(n):
                writer.append(event)
        writer.flush()
    store = PostgresEventStore(pg_url, snapshot_every=None)
    async with engine_on(store) as fo:
        assert fo.metrics().calls == 2 * _PAGE // 4
        await fo.call("hi")
        assert fo.snapshot() == replay(fo.event_store, from_start=True)
        assert fo.snapshot() == fold(list(store.read()))


async def test_a_synchronous_accessor_between_two_slices_loads_once_and_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    append_calls(path, 600, started=True)
    store = PagedStore(path, snapshot_every=None)
    fo = engine_on(store)
    seen: list[int] = []
    asked = threading.Event()

    def read_the_metrics_meanwhile(after: int) -> None:
        if not asked.is_set():  # between two slices of the load, on the loop: loads at once
            asked.set()
            anyio.from_thread.run_sync(lambda: seen.append(fo.metrics().calls))

    store.on_page = read_the_metrics_meanwhile
    await fo.call("hi")
    assert seen == [600]
    assert fo.metrics().calls == 601
    assert fo.snapshot() == replay(fo.event_store, from_start=True)
    await fo.aclose()
