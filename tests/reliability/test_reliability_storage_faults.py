"""Storage faults: the disk fills up, the file turns read-only, another writer holds the lock,
the file is deleted. In every case:

- model calls keep succeeding, and promptly: a ``process``-mode call does not wait for a log
  it cannot write (each call runs under a ``fail_after`` hang guard);
- ``fo.log_status()["errors"]`` counts the failures and an ERROR log line names the log;
- the events wait in memory and are written once the fault clears (where it can clear), so
  the log ends up complete and ``replay`` equals the live metrics;
- what overflows ``max_buffer`` is counted in ``dropped`` (stored + dropped == emitted);
- ``strict=True`` raises ``EventLogError`` instead.

The faults are real: a 1 MiB tmpfs filled with a file (needs root to mount), ``chattr +i``
(needs root and a filesystem with inode flags), a second SQLite connection in
``BEGIN EXCLUSIVE``, ``os.unlink``. Where the sandbox cannot set one up, the test is skipped
with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from reliability_support import (
    ScriptedClient,
    assert_one_terminal_each,
    eventually,
    own_threads,
    read_all,
    threads_settled,
)

from devs.risks.multi_model_failover import (
    EventLogError,
    MultiModelFailover,
    SQLiteEventStore,
    replay,
)

pytestmark = pytest.mark.anyio

GUARD = 10.0  # seconds: a hang guard, never a timing assertion
CALLS = 20


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MiB tmpfs of its own."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem")
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return filler


@contextlib.contextmanager
def immutable(*files: Path) -> Iterator[None]:
    """Make ``files`` immutable (``chattr +i``), even for root; undone on exit."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr command: cannot make a file read-only for root")
    done = []
    try:
        for file in files:
            result = _run("chattr", "+i", str(file))
            if result.returncode != 0:
                pytest.skip(f"chattr +i is not supported here: {result.stderr.strip()}")
            done.append(file)
        yield
    finally:
        for file in done:
            _run("chattr", "-i", str(file))


def engine(store: SQLiteEventStore | Path, **options: Any) -> MultiModelFailover:
    """One always-answering client on ``store``, process durability."""
    return MultiModelFailover(
        [ScriptedClient("a"), ScriptedClient("b")], event_store=store, **options
    )


async def calls_keep_succeeding(fo: MultiModelFailover, count: int = CALLS) -> None:
    """``count`` calls, each answered and none held up by the log."""
    for _ in range(count):
        with anyio.fail_after(GUARD):
            assert await fo.call("during the fault") == "a answered"


def assert_loud(fo: MultiModelFailover, records: list[dict[str, Any]], what: str) -> None:
    """The fault is counted in ``log_status`` and an ERROR line about the log says ``what``."""
    # A call returns once its events are journaled: the writer meets the fault at its next
    # batch (False while the log is failing; True once a replaced file took the events).
    fo.event_store.flush(timeout=GUARD)  # type: ignore[attr-defined]
    status = fo.log_status()
    assert status["errors"] > 0, status
    lines = [str(r["message"]) for r in records if r["level"].name == "ERROR"]  # type: ignore[attr-defined]
    path = str(fo.event_store.path)  # type: ignore[attr-defined]
    assert any(path in line and what in line for line in lines), lines


def committed_calls(path: Path) -> int:
    """Terminal call events in the file, read by a connection of its own."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM events WHERE type IN "
            "('call_succeeded', 'call_failed', 'call_cancelled')"
        ).fetchone()
    return int(count)


async def assert_complete_after(fo: MultiModelFailover, path: Path, calls: int) -> None:
    """Once the fault has cleared, every call reaches the file; replay equals live."""
    await eventually(lambda: committed_calls(path) == calls)
    with anyio.fail_after(GUARD):
        await fo.aclose()
    events = read_all(path)
    assert sum(assert_one_terminal_each(events).values()) == calls
    assert replay(path).metrics == fo.metrics()


# -- disk full -------------------------------------------------------------------------------


async def test_disk_full_calls_go_on_and_events_land_when_space_returns(
    tiny_disk: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tiny_disk / "events.sqlite3"
    fo = engine(log)
    await calls_keep_succeeding(fo, 1)
    filler = fill(tiny_disk)

    await calls_keep_succeeding(fo)
    assert_loud(fo, log_records, "full")
    assert fo.log_status()["dropped"] == 0

    filler.unlink()
    await assert_complete_after(fo, log, 1 + CALLS)


async def test_disk_full_overflow_is_counted_never_silent(
    tiny_disk: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tiny_disk / "events.sqlite3"
    fo = engine(SQLiteEventStore(log, max_buffer=10))
    await calls_keep_succeeding(fo, 1)
    filler = fill(tiny_disk)

    await calls_keep_succeeding(fo)
    dropped = fo.log_status()["dropped"]
    assert dropped > 0
    assert any("buffer full" in str(r["message"]) for r in log_records)

    filler.unlink()
    emitted = fo.snapshot().events
    await eventually(lambda: fo.event_store.flush(0.1))  # type: ignore[attr-defined]
    await fo.aclose()
    stored = len(read_all(log))
    assert stored + fo.log_status()["dropped"] == emitted + 1  # + engine_stopped


async def test_disk_full_in_strict_mode_raises(tiny_disk: Path) -> None:
    log = tiny_disk / "events.sqlite3"
    fo = engine(SQLiteEventStore(log, strict=True))
    await calls_keep_succeeding(fo, 1)
    filler = fill(tiny_disk)
    try:
        with anyio.fail_after(GUARD), pytest.raises(EventLogError, match="full"):
            await calls_keep_succeeding(fo)
    finally:
        filler.unlink()
        await fo.aclose()


async def test_overflow_in_strict_mode_raises(tiny_disk: Path) -> None:
    log = tiny_disk / "events.sqlite3"
    fo = engine(SQLiteEventStore(log, strict=True, max_buffer=5, durability="buffered"))
    await calls_keep_succeeding(fo, 1)
    filler = fill(tiny_disk)
    try:
        with anyio.fail_after(GUARD), pytest.raises(EventLogError, match="buffer full"):
            await calls_keep_succeeding(fo)
    finally:
        filler.unlink()
        await eventually(lambda: fo.event_store.flush(0.1))  # type: ignore[attr-defined]
        await fo.aclose()


async def test_close_with_a_full_strict_buffer_still_closes_the_log(tiny_disk: Path) -> None:
    threads = own_threads()
    log = tiny_disk / "events.sqlite3"
    fo = engine(SQLiteEventStore(log, strict=True, max_buffer=5, durability="buffered"))
    await calls_keep_succeeding(fo, 1)
    filler = fill(tiny_disk)
    with contextlib.suppress(EventLogError):
        await calls_keep_succeeding(fo)
    try:
        with anyio.fail_after(GUARD), contextlib.suppress(EventLogError):
            await fo.aclose()
        assert not threads_settled(threads, timeout=0.5), "the writer thread outlived aclose()"
    finally:
        filler.unlink()
        fo.event_store.close()  # type: ignore[attr-defined]


# -- read-only -------------------------------------------------------------------------------


async def test_read_only_log_calls_go_on_and_events_land_when_writable(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    fo = engine(log)
    await calls_keep_succeeding(fo, 1)
    wal = Path(f"{log}-wal")

    # Not the -shm file: it is memory-mapped, and an immutable mapping kills the process.
    with immutable(log, wal):
        await calls_keep_succeeding(fo)
        assert_loud(fo, log_records, "write failed")

    await assert_complete_after(fo, log, 1 + CALLS)


# -- locked by another writer ----------------------------------------------------------------


async def test_a_long_lock_by_another_writer_does_not_hold_calls_up(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(log, lock_timeout=0.2)
    fo = engine(store)
    await calls_keep_succeeding(fo, 1)
    locked, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(log, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(GUARD)
            conn.execute("COMMIT")
        finally:
            conn.close()

    holder = threading.Thread(target=other_writer)
    holder.start()
    try:
        await anyio.to_thread.run_sync(locked.wait, GUARD)
        await calls_keep_succeeding(fo)
        assert_loud(fo, log_records, "locked")
    finally:
        release.set()
        holder.join(GUARD)

    await assert_complete_after(fo, log, 1 + CALLS)


async def test_a_short_lock_is_waited_out_without_an_error(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = engine(log)  # default lock_timeout: 1 s
    await calls_keep_succeeding(fo, 1)
    conn = sqlite3.connect(log, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(calls_keep_succeeding, fo, 3)
            await anyio.sleep(0.3)
            conn.execute("COMMIT")
    finally:
        conn.close()
    assert fo.log_status()["errors"] == 0
    await assert_complete_after(fo, log, 4)


# -- deleted ---------------------------------------------------------------------------------


async def test_a_deleted_log_is_noticed_and_reported(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    fo = engine(log)
    await calls_keep_succeeding(fo, 1)
    for file in (log, Path(f"{log}-wal"), Path(f"{log}-shm")):
        file.unlink()
    try:
        await calls_keep_succeeding(fo)
        assert_loud(fo, log_records, "")
    finally:
        with anyio.fail_after(GUARD):
            await fo.aclose()


async def test_after_a_deleted_log_every_call_lands_in_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = engine(log)
    await calls_keep_succeeding(fo, 1)
    assert fo.event_store.flush()  # type: ignore[attr-defined]  # in the file before it goes
    for file in (log, Path(f"{log}-wal"), Path(f"{log}-shm")):
        file.unlink()
    await calls_keep_succeeding(fo)
    assert fo.event_store.flush()  # type: ignore[attr-defined]  # moved into the new file
    assert committed_calls(log) == CALLS  # the calls before the deletion went with the file
    with anyio.fail_after(GUARD):
        await fo.aclose()
    assert sum(assert_one_terminal_each(read_all(log)).values()) == CALLS


async def test_a_deleted_log_never_hangs_calls_or_close(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = engine(log)
    await calls_keep_succeeding(fo, 1)
    for file in (log, Path(f"{log}-wal"), Path(f"{log}-shm")):
        file.unlink()
    await calls_keep_succeeding(fo)
    with anyio.fail_after(GUARD):
        await fo.aclose()
