"""Start-up: building an engine reads nothing; its first async use loads the log on a worker
thread, from the latest snapshot, folding only what follows it; closing leaves a snapshot.

The live view must still equal the fold of the whole log (``replay(log, from_start=True)``),
with the events the engine emitted before its load (``engine_started``) folded exactly once.
"""

from __future__ import annotations

import contextlib
import gc
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover import (
    EventLogError,
    HealthState,
    ModelError,
    MultiModelFailover,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.core import events as ev
from devs.risks.multi_model_failover.core.projections import FOLD_KEY, Snapshot, fold
from devs.risks.multi_model_failover.storage._group_commit import RowReader
from devs.risks.multi_model_failover.storage.archive import archive

from .fakes import FakeModelClient, always, failing

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 3, 1, tzinfo=UTC)
OLD_KEY = "0-0123456789ab"
STALL = 0.05  # seconds: the longest the event loop may go without running another task


class CountingStore(SQLiteEventStore):
    """An SQLite log that counts the events it decodes, and the threads it reads rows on and
    decodes them on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events_read = 0
        self.read_threads: set[int] = set()
        self.decode_threads: set[int] = set()

    def reader(self, **options: Any) -> RowReader:
        reader = super().reader(**options)
        fetch = reader.fetch

        def fetch_counted(after: int) -> list[tuple[Any, ...]]:
            self.read_threads.add(threading.get_ident())
            return fetch(after)

        reader.fetch = fetch_counted  # type: ignore[method-assign]
        return reader

    def _decode(self, row: Sequence[Any], **options: Any) -> ev.Event | None:
        self.decode_threads.add(threading.get_ident())
        event = super()._decode(row, **options)
        self.events_read += event is not None
        return event


def engine_on(store: object, *clients: FakeModelClient, **options: Any) -> MultiModelFailover:
    """An engine on ``store``: no backoff, and a probe round an hour (of real time) apart, so
    that ``async with`` runs one round and then nothing more until the block ends."""
    return MultiModelFailover(
        list(clients) or [FakeModelClient(model_id="a"), FakeModelClient(model_id="b")],
        {"jitter": "none", "base_delay": 0},
        health_check_interval=3600,
        event_store=store,  # type: ignore[arg-type]
        rng=random.Random(7),
        **options,
    )


async def write_history(path: Path, calls: int = 5, *, snapshots: bool = False) -> int:
    """An engine's session on ``path``: ``calls`` calls, model b put in maintenance.

    ``snapshots=False`` leaves no snapshot (as a log written before them). The log's last seq.
    """
    store = SQLiteEventStore(path, snapshot_every=10_000 if snapshots else None)
    fo = engine_on(store)
    for _ in range(calls):
        await fo.call("hi")
    await fo.set_maintenance("b", True, reason="deploy")
    await fo.aclose()
    return store.last_seq()


def snapshot_rows(path: Path) -> list[tuple[int, str, str, bytes]]:
    with SQLiteEventStore(path, create=False) as store:
        found = store.query("SELECT cursor, kind, fold, body FROM snapshots ORDER BY cursor")
    return [(int(c), k, f, bytes(b)) for c, k, f, b in found]


def a_call(n: int) -> list[ev.Event]:
    call, at = f"c-{n}", T0 + timedelta(milliseconds=n)
    return [
        ev.CallStarted(at=at, call_id=call, order=("a",)),
        ev.AttemptStarted(at=at, call_id=call, model_id="a", attempt=1),
        ev.AttemptSucceeded(at=at, call_id=call, model_id="a", attempt=1, latency=0.01),
        ev.CallSucceeded(at=at, call_id=call, model_id="a", attempts=1, failovers=0, latency=0.01),
    ]


# -- building reads nothing; the first async use loads ---------------------------------------


async def test_building_an_engine_reads_nothing_and_its_first_use_loads_off_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    await write_history(path)
    store = CountingStore(path)

    fo = engine_on(store)
    assert store.events_read == 0, "the constructor folded the log"
    async with fo:
        assert store.events_read > 0
        assert threading.get_ident() not in store.read_threads, "read on the event loop"
        # Decoding and folding are Python's work: on a worker thread they would hold the GIL
        # against the loop (which then waits a switch interval, 5 ms, for it). On the loop,
        # they run in slices between which other tasks run (a test below times them).
        assert store.decode_threads == {threading.get_ident()}, "decoded off the event loop"
        assert fo.states["b"] is HealthState.MAINTENANCE
        assert fo.snapshot() == replay(fo.event_store, from_start=True)


async def test_calls_made_before_the_load_wait_for_it(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    await write_history(path)
    a, b = FakeModelClient(model_id="a"), FakeModelClient(model_id="b")
    a.handler = failing("server")
    fo = engine_on(CountingStore(path), a, b)

    answers: list[object] = []

    async def call() -> None:
        try:
            answers.append(await fo.call("hi"))
        except ModelError as exc:
            answers.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(call)
    # b is in maintenance in the log: a call that had not waited for the load would have
    # tried it and been answered.
    assert b.calls == []
    assert len(answers) == 3
    assert all(isinstance(answer, ModelError) for answer in answers)
    assert fo.snapshot() == replay(fo.event_store, from_start=True)
    await fo.aclose()


async def test_sync_accessors_load_when_nothing_is_loaded_yet(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    await write_history(path, calls=4)
    store = CountingStore(path)
    fo = engine_on(store)
    assert store.events_read == 0

    assert fo.states["b"] is HealthState.MAINTENANCE
    assert store.events_read > 0
    assert fo.metrics().calls == 4
    assert fo.rotation == ["a"]
    assert fo.snapshot() == replay(store, from_start=True)
    await fo.aclose()


async def test_events_others_append_while_it_loads_are_folded_once(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    await write_history(path)
    fo = engine_on(SQLiteEventStore(path))
    # Between the engine's start (which pins the end of the log) and its load, an operator
    # puts b back into rotation and takes a out.
    with SQLiteEventStore(path, writer="operator", snapshot_every=None) as operator:
        operator.append(ev.Maintenance(at=T0, model_id="b", on=False, by="operator"))
        operator.append(ev.Maintenance(at=T0, model_id="a", on=True, by="operator"))

    async with fo:
        await fo.follow()
        assert fo.states == {"a": HealthState.MAINTENANCE, "b": HealthState.HEALTHY}
        await fo.call("hi")
        assert fo.snapshot() == replay(fo.event_store, from_start=True)


async def test_a_replica_scoped_engine_loads_the_fleets_maintenance_not_its_health(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    a = FakeModelClient(model_id="a")
    a.handler = failing("auth")  # unhealthy at once, in the fleet's view
    async with engine_on(SQLiteEventStore(path), a, FakeModelClient(model_id="b")) as fo:
        await fo.call("hi")
        await fo.set_maintenance("b", True)
        assert fo.states == {"a": HealthState.UNHEALTHY, "b": HealthState.MAINTENANCE}

    replica = engine_on(str(path), health_policy={"scope": "replica"})
    async with replica:
        # Another replica's judgement of a is not this one's; the operator's maintenance is.
        assert replica.states == {"a": HealthState.HEALTHY, "b": HealthState.MAINTENANCE}
        assert replica.snapshot() == replay(replica.event_store, from_start=True)


async def test_a_log_that_cannot_be_loaded_fails_the_first_use_and_closes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    cut = await write_history(path) - 1
    with SQLiteEventStore(path, create=False) as store:
        # An archive cut by a fold this version does not know: nothing to fold over.
        store.transaction(
            [
                (
                    "INSERT INTO snapshots (cursor, kind, fold, at, body) VALUES (?, ?, ?, ?, ?)",
                    (cut, "cut", OLD_KEY, "2025-01-01T00:00:00+00:00", b"\x80"),
                ),
                ("DELETE FROM events WHERE seq <= ?", (cut,)),
            ]
        )

    fo = engine_on(SQLiteEventStore(path))
    with pytest.raises(EventLogError, match="archived"):
        async with fo:
            pytest.fail("the block ran on a log that was not loaded")
    assert fo.closed
    assert fo.event_store.closed  # type: ignore[attr-defined]


# -- a load in slices: what happens between them ---------------------------------------------


def history_of(path: Path, calls: int) -> None:
    """``calls`` calls stamped a millisecond apart, and no snapshot: a load folds every one,
    in pages (``storage.snapshots._PAGE`` rows each)."""
    with SQLiteEventStore(path, durability="buffered", snapshot_every=None) as store:
        store.append(ev.EngineStarted(at=T0, models=("a", "b")))
        for n in range(calls):
            for event in a_call(n):
                store.append(event)


class PagedStore(SQLiteEventStore):
    """An SQLite log that runs ``on_page(after)`` on the worker thread before each page of a
    load is fetched past the first, and notes the pages fetched once the store was closed."""

    on_page: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads_after_close: list[int] = []

    def reader(self, **options: Any) -> RowReader:
        reader = super().reader(**options)
        fetch = reader.fetch

        def fetch_after(after: int) -> list[tuple[Any, ...]]:
            if after > 0 and self.on_page is not None:
                self.on_page(after)
            if self.closed:
                self.reads_after_close.append(after)
            return fetch(after)

        reader.fetch = fetch_after  # type: ignore[method-assign]
        return reader


async def cancelled_mid_load(store: PagedStore, use: Callable[[], Awaitable[None]]) -> None:
    """Run ``use`` (a first use of an engine on ``store``), cancelled once its load has
    folded a page and is about to fetch the next."""
    paging = anyio.Event()
    store.on_page = lambda after: anyio.from_thread.run_sync(paging.set)
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()

        async def cancel_mid_load() -> None:
            await paging.wait()
            scope.cancel()

        group.start_soon(cancel_mid_load)
        with scope:
            await use()
    assert scope.cancelled_caught


async def test_an_archive_that_cuts_the_log_while_an_engine_loads_it_is_folded_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    history_of(path, 600)  # 2,401 events: three pages
    archived = tmp_path / "archive.sqlite3"
    results: list[Any] = []

    def archive_once(after: int) -> None:
        if not results:  # after the first page, the events of the first half leave the log
            with SQLiteEventStore(path, create=False, snapshot_every=None) as operator:
                results.append(
                    archive(operator, before=T0 + timedelta(milliseconds=300), to=archived)
                )

    store = PagedStore(path)
    store.on_page = archive_once
    async with engine_on(store) as fo:
        (result,) = results  # the archive ran while the engine loaded
        assert result.moved > 1000
        assert fo.metrics().calls == 600, "the events between the page and the cut: once"
        await fo.call("hi")
        assert fo.snapshot() == replay(fo.event_store, from_start=True)
    assert replay(path) == replay(path, from_start=True)
    assert replay(path).metrics.calls == 601


async def test_leaving_while_the_log_loads_closes_the_engine_and_its_log(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    history_of(path, 600)
    store = PagedStore(path)
    fo = engine_on(store)

    async def start() -> None:
        async with fo:
            pytest.fail("the block ran though its start was cancelled")

    await cancelled_mid_load(store, start)
    assert fo.closed
    assert store.closed
    # What the engine wrote (it started) is in the log, and its snapshot is true.
    assert replay(path) == replay(path, from_start=True)
    with SQLiteEventStore(path, create=False) as log:
        assert log.snapshots.verify().ok


async def test_a_call_cancelled_while_the_log_loads_leaves_the_next_one_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    history_of(path, 600)
    store = PagedStore(path)
    fo = engine_on(store)  # no ``async with``: the first call loads

    async def call() -> None:
        await fo.call("hi")
        pytest.fail("the call answered though it was cancelled while the log loaded")

    await cancelled_mid_load(store, call)
    store.on_page = None
    await fo.call("hi")
    assert fo.metrics().calls == 601
    assert fo.snapshot() == replay(fo.event_store, from_start=True)
    await fo.aclose()


class ListStore:
    """The ``EventStore`` protocol and nothing more (no snapshots): a list in memory."""

    durability = "buffered"
    writer = "list"

    def __init__(self, events: list[ev.Event]) -> None:
        self.events = [msgspec.structs.replace(e, seq=n) for n, e in enumerate(events, 1)]

    def append(self, event: ev.Event) -> int:
        self.events.append(msgspec.structs.replace(event, seq=len(self.events) + 1))
        return len(self.events)

    async def wait_committed(self, ticket: int) -> None:
        await anyio.lowlevel.checkpoint()

    def read(self, *, after: int = 0) -> Iterator[ev.Event]:
        return iter(self.events[after:])

    def read_others(self, after: int) -> tuple[list[ev.Event], int]:
        return [], len(self.events)

    def last_seq(self) -> int:
        return len(self.events)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_store_without_snapshots_loads_by_folding_it_all_off_the_loop() -> None:
    history = [ev.EngineStarted(at=T0, models=("a", "b"))]
    for n in range(50):
        history += a_call(n)
    store = ListStore(history)
    async with engine_on(store) as fo:
        assert fo.metrics().calls == 50
        await fo.call("hi")
        assert fo.snapshot() == fold(store.events)


# -- snapshots at close and at the next start ------------------------------------------------


async def test_closing_leaves_a_snapshot_equal_to_the_whole_fold(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    async with engine_on(SQLiteEventStore(path)) as fo:
        for _ in range(3):
            await fo.call("hi")
        await fo.set_maintenance("a", True)

    with SQLiteEventStore(path, create=False) as store:
        last = store.last_seq()
    ((cursor, kind, key, body),) = snapshot_rows(path)
    assert (cursor, kind, key) == (last, "close", FOLD_KEY)
    assert msgspec.msgpack.decode(body, type=Snapshot) == replay(path, from_start=True)


async def test_a_new_engine_folds_only_the_events_after_the_latest_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    await write_history(path, snapshots=True)
    with SQLiteEventStore(path, writer="operator", snapshot_every=None) as operator:
        operator.append(ev.Maintenance(at=T0, model_id="a", on=True, by="operator"))
        for event in a_call(1):
            operator.append(event)

    store = CountingStore(path)
    async with engine_on(store) as fo:
        assert store.events_read == 5, "only the events after the close snapshot"
        assert fo.snapshot() == replay(path, from_start=True)
        assert fo.states == {"a": HealthState.MAINTENANCE, "b": HealthState.MAINTENANCE}


async def test_a_stale_snapshot_is_folded_over_once_then_snapshotted_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    last = await write_history(path, calls=20)
    with SQLiteEventStore(path, create=False) as store:
        lying = fold(store.read())
        lying.metrics.calls = 999
        store.transaction(
            [
                (
                    "INSERT INTO snapshots (cursor, kind, fold, at, body) VALUES (?, ?, ?, ?, ?)",
                    (last, "close", OLD_KEY, "2025-01-01", msgspec.msgpack.encode(lying)),
                )
            ]
        )

    store = CountingStore(path, snapshot_every=50)
    async with engine_on(store) as fo:
        assert store.events_read == last, "the whole log, once"
        assert fo.metrics().calls == 20, "the stale snapshot was not trusted"
        assert (last, "periodic", FOLD_KEY) in [row[:3] for row in snapshot_rows(path)]

    again = CountingStore(path, snapshot_every=50)
    async with engine_on(again) as fo:
        assert again.events_read == 0
        assert fo.metrics().calls == 20


# -- the event loop while a large log loads --------------------------------------------------


@pytest.fixture(scope="module")
def large_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Logs of that many events and no snapshot, written once for the module."""
    made: dict[int, Path] = {}
    folder = tmp_path_factory.mktemp("large")
    for size in (20_000, 200_000):
        path = folder / f"{size}.sqlite3"
        made[size] = path
    return made


def large_log(template: Path, size: int, into: Path, *, stale: bool) -> Path:
    if not template.exists():
        with SQLiteEventStore(
            template, durability="buffered", snapshot_every=None, batch_size=20_000
        ) as store:
            store.append(ev.EngineStarted(at=T0, models=("a", "b")))
            for n in range((size - 1) // 4):
                for event in a_call(n):
                    store.append(event)
    path = into / "large.sqlite3"
    shutil.copyfile(template, path)
    if stale:
        with SQLiteEventStore(path, create=False) as store:
            last = store.last_seq()
            store.transaction(
                [
                    (
                        "INSERT INTO snapshots (cursor, kind, fold, at, body) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (last, "close", OLD_KEY, "2025-01-01", msgspec.msgpack.encode(Snapshot())),
                    )
                ]
            )
    return path


@pytest.mark.parametrize("stale", [False, True], ids=["no snapshot", "stale snapshot"])
@pytest.mark.parametrize("size", [20_000, pytest.param(200_000, marks=pytest.mark.slow)])
async def test_the_event_loop_never_stalls_while_a_large_log_loads(
    tmp_path: Path, large_logs: dict[int, Path], size: int, stale: bool
) -> None:
    path = large_log(large_logs[size], size, tmp_path, stale=stale)
    gaps: list[float] = []
    loaded = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not loaded.is_set():
            await anyio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    fo = engine_on(CountingStore(path))  # reads nothing (a test above): not timed here
    # The objects of the test run itself (hundreds of thousands) out of the collector's
    # reach: a full collection of them, which any allocation may set off, is not the load's.
    gc.collect()
    gc.freeze()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.sleep(0.01)
            async with fo:
                loaded.set()
                assert fo.metrics().calls == (size - 1) // 4
                read = fo.event_store.events_read  # type: ignore[attr-defined]
                assert read == 1 + 4 * ((size - 1) // 4), "the whole log, on a worker thread"
    finally:
        gc.unfreeze()

    assert len(gaps) > 5, "the ticker never ran while the log loaded"
    assert max(gaps) < STALL, f"the event loop stalled {max(gaps):.3f} s"


# -- replay ----------------------------------------------------------------------------------


async def test_replay_starts_from_the_latest_snapshot_unless_from_start(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    last = await write_history(path, snapshots=True)
    with SQLiteEventStore(path, create=False) as store:
        events = list(store.read())
        planted = fold(events)
        planted.metrics.calls += 1000
        store.snapshots.save(planted, last, "periodic")

    assert replay(path).metrics.calls == 1005
    assert replay(path, from_start=True) == fold(events)
    assert replay(events) == fold(events)
    assert replay(iter(events), from_start=True) == fold(events)
    with SQLiteEventStore(path, create=False) as store:
        assert replay(store).metrics.calls == 1005
        assert replay(store, from_start=True, lenient=True) == fold(events)


async def test_an_engine_on_a_shared_log_starts_from_its_snapshot(pg_url: str) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
        PostgresEventStore,
    )

    class CountingPostgres(PostgresEventStore):
        events_read = 0

        def _decode(self, row: Sequence[Any], **options: Any) -> ev.Event | None:
            event = super()._decode(row, **options)
            self.events_read += event is not None
            return event

    async with engine_on(pg_url) as fo:
        await fo.call("hi")
    whole = replay(pg_url, from_start=True)
    assert replay(pg_url) == whole
    assert whole.metrics.calls == 1

    store = CountingPostgres(pg_url)
    async with engine_on(store) as fo:
        assert store.events_read == 0, "the close snapshot covers the whole log"
        assert fo.snapshot() == replay(store, from_start=True)


# -- the property --------------------------------------------------------------------------

_session = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from(["ok", "server", "auth"])),
        st.tuples(st.just("maintenance"), st.booleans()),
        st.tuples(st.just("probe"), st.booleans()),
    ),
    max_size=6,
)


async def _session_run(path: Path, actions: list[tuple[str, Any]], every: int) -> Snapshot:
    a = FakeModelClient(model_id="a")
    b = FakeModelClient(model_id="b")
    fo = engine_on(SQLiteEventStore(path, snapshot_every=every), a, b)
    for action, arg in actions:
        if action == "call":
            a.handler = always("ok") if arg == "ok" else failing(arg)
            with contextlib.suppress(ModelError):
                await fo.call("hi")
        elif action == "maintenance":
            await fo.set_maintenance("a", arg)
        else:
            a.probe = arg
            await fo.check_health()
    live = fo.snapshot()
    assert live == replay(fo.event_store, from_start=True)
    await fo.aclose()
    return live


@settings(max_examples=20, deadline=None)
@given(sessions=st.lists(_session, min_size=1, max_size=3), every=st.sampled_from([2, 5, 50]))
def test_every_restart_sees_the_whole_fold(
    sessions: list[list[tuple[str, Any]]], every: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.sqlite3"
        for actions in sessions:
            anyio.run(_session_run, path, actions, every)
            assert replay(path) == replay(path, from_start=True)
