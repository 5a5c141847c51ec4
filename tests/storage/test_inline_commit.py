"""The default durability at speed (issue 13): an in-memory log never makes a call wait, and a
file log in ``process`` mode commits a sequential caller's events on the caller's own thread,
without ever stalling the event loop on another connection's lock; concurrent callers still
share group commits, and events nobody waits for still reach the file."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from devs.risks.multi_model_failover.core.events import CallStarted, HealthProbe
from devs.risks.multi_model_failover.storage import _journal
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

AT = datetime(2026, 3, 1, tzinfo=UTC)


def started(n: int) -> CallStarted:
    return CallStarted(at=AT, call_id=f"c-{n}", order=("primary",))


def stored(path: Path) -> int:
    """Rows another connection sees committed in the file."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


class Writes:
    """Which threads ran the store's commits (the writer thread's ``_write``, or inline)."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self.by_writer = 0
        self.inline: list[int] = []
        write, inline = store._write, store._write_inline

        def counted_write(batch: list[object]) -> None:
            self.by_writer += 1
            write(batch)  # type: ignore[arg-type]

        def counted_inline(batch: list[object]) -> bool:
            done = inline(batch)  # type: ignore[arg-type]
            if done:
                self.inline.append(threading.get_ident())
            return done

        store._write = counted_write  # type: ignore[method-assign]
        store._write_inline = counted_inline  # type: ignore[method-assign]


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteEventStore]:
    # Inline commits are what a file log does without a journal (no ``fcntl``: Windows); with
    # one, see test_journal.py.
    monkeypatch.setattr(_journal, "fcntl", None)
    store = SQLiteEventStore(tmp_path / "events.sqlite3", durability="process")
    yield store
    store.close()


async def test_an_in_memory_log_never_makes_a_caller_wait_for_its_writer() -> None:
    store = SQLiteEventStore(":memory:", durability="process")
    release = threading.Event()
    write = store._write

    def stuck(batch: list[object]) -> None:
        release.wait(10)
        write(batch)  # type: ignore[arg-type]

    store._write = stuck  # type: ignore[method-assign]
    try:
        with anyio.fail_after(1):
            await store.wait_committed(store.append(started(1)))
    finally:
        release.set()
        store.close()
    assert [event.seq for event in store.read()] == [1]


async def test_a_sequential_caller_commits_its_own_events_before_it_goes_on(
    file_store: SQLiteEventStore,
) -> None:
    writes = Writes(file_store)
    path = Path(file_store.path)
    for n in range(1, 51):
        ticket = file_store.append(started(n))
        await file_store.wait_committed(ticket)
        assert stored(path) == n  # committed, as another process sees it, before going on
    assert writes.inline == [threading.get_ident()] * 50
    assert writes.by_writer == 0


async def test_another_connection_s_lock_never_stalls_the_event_loop(
    file_store: SQLiteEventStore,
) -> None:
    path = Path(file_store.path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock, as another replica might
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def commit() -> None:
        await file_store.wait_committed(file_store.append(started(1)))
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        group.start_soon(commit)
        await anyio.sleep(0.6)  # under the store's lock_timeout (1 s): its writer waits
        assert stored(path) == 0  # still locked out: the caller waits, the loop runs
        blocker.execute("COMMIT")
        blocker.close()
        with anyio.fail_after(10):
            await done.wait()
    assert file_store.flush()
    assert stored(path) == 1
    # Blocked on the lock, the loop would stall for the 0.6 s it is held (or the busy timeout).
    assert max(gaps) < 0.4, f"the event loop stalled {max(gaps):.3f} s"


async def test_concurrent_callers_still_share_commits(file_store: SQLiteEventStore) -> None:
    writes = Writes(file_store)
    path = Path(file_store.path)
    callers = 200

    async def call(n: int) -> None:
        ticket = file_store.append(started(n))
        await anyio.lowlevel.checkpoint()  # the others append too before anyone waits
        await file_store.wait_committed(ticket)

    async with anyio.create_task_group() as group:
        for n in range(callers):
            group.start_soon(call, n)
    assert stored(path) == callers
    assert writes.by_writer + len(writes.inline) < callers / 10


async def test_events_nobody_waits_for_still_reach_the_file(
    file_store: SQLiteEventStore,
) -> None:
    path = Path(file_store.path)
    file_store.append(HealthProbe(at=AT, model_id="primary", ok=True, latency=0.01))
    with anyio.fail_after(2):
        while stored(path) < 1:  # noqa: ASYNC110 - another connection's view
            await anyio.sleep(0.01)


async def test_the_write_ahead_log_stays_bounded_under_inline_commits(
    file_store: SQLiteEventStore,
) -> None:
    path = Path(file_store.path)
    for n in range(6_000):
        await file_store.wait_committed(file_store.append(started(n)))
    with anyio.fail_after(5):  # the writer checkpoints between its looks at the queue
        while True:
            with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                (_, wal_pages, moved) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            wal = Path(f"{path}-wal").stat().st_size  # noqa: ASYNC240 - a test
            if moved == wal_pages and wal < 40 * 2**20:
                break
            await anyio.sleep(0.05)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # theirs
    assert stored(path) == 6_000
