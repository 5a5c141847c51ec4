"""The journal of a file log in ``process`` mode (issue 13): ``wait_committed`` returns once the
caller's events are written to the store's journal file; the writer moves them into the log in
group commits; the next opener of the log folds in the journal of a process that died (and
never the journal of a live one); a read through the same store sees what its callers saw
committed; ``close`` leaves no journal behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from devs.risks.multi_model_failover.core.events import AttemptStarted, CallStarted, encode
from devs.risks.multi_model_failover.storage import _journal
from devs.risks.multi_model_failover.storage._journal import SUFFIX, Journal
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

AT = datetime(2026, 3, 1, tzinfo=UTC)


def attempt(name: str, n: int) -> AttemptStarted:
    return AttemptStarted(at=AT, call_id=name, model_id="m", attempt=n)


def journals(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.endswith(SUFFIX))


def attempts_of(path: Path, name: str) -> list[int]:
    """The attempt numbers the log holds for writer ``name``'s events, in seq order (opening
    the log: which folds in the journals of dead processes)."""
    with contextlib.closing(SQLiteEventStore(path, create=False)) as store:
        events = list(store.read())
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    return [e.attempt for e in events if isinstance(e, AttemptStarted) and e.call_id == name]


def stall(store: SQLiteEventStore) -> threading.Event:
    """Stall ``store``'s writer before its next commit until the returned event is set: what
    its callers journal meanwhile is in the journal only (a slow or locked disk, say)."""
    gate = threading.Event()
    write = store._write

    def stalled(batch: list[object]) -> None:
        gate.wait(30)
        write(batch)  # type: ignore[arg-type]

    store._write = stalled  # type: ignore[method-assign]
    return gate


# A child process: ``moved`` events committed and moved into the log (flushed), then ``held``
# more committed while its writer is stalled (so they are in its journal only), then it kills
# itself (``kill``), or waits for a line on stdin and closes its store (``wait``).
CHILD = """
import os, signal, sys, threading
from datetime import UTC, datetime
import anyio
from devs.risks.multi_model_failover.core.events import AttemptStarted
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

path, name, then = sys.argv[1], sys.argv[2], sys.argv[5]
moved, held = int(sys.argv[3]), int(sys.argv[4])
store = SQLiteEventStore(path, durability="process", writer=name)

def event(n):
    return AttemptStarted(at=datetime.now(UTC), call_id=name, model_id="m", attempt=n)

async def main():
    for n in range(1, moved + 1):
        await store.wait_committed(store.append(event(n)))
        print(n, flush=True)
    assert store.flush()
    gate = threading.Event()
    write = store._write
    def stalled(batch):
        gate.wait(60)
        write(batch)
    store._write = stalled
    for n in range(moved + 1, moved + held + 1):
        await store.wait_committed(store.append(event(n)))
        print(n, flush=True)
    if then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("held", flush=True)
    sys.stdin.readline()
    gate.set()
    store.close()
    print("closed", flush=True)

anyio.run(main)
"""


def run_child(path: Path, name: str, moved: int, held: int) -> list[int]:
    """Run a child that kills itself; the events it saw committed, in order."""
    child = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CHILD, str(path), name, str(moved), str(held), "kill"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    return [int(line) for line in child.stdout.split()]


@pytest.mark.parametrize("moved", [0, 40])
def test_a_process_killed_right_after_wait_committed_loses_nothing(
    tmp_path: Path, moved: int
) -> None:
    path = tmp_path / "events.sqlite3"
    seen = run_child(path, "dead", moved, 60)
    assert seen == list(range(1, moved + 61))
    assert len(journals(tmp_path)) == 1  # the dead process's events are in its journal
    # Every event it saw committed, once (the moved ones are not added again), in order.
    assert attempts_of(path, "dead") == seen
    assert journals(tmp_path) == []  # folded in, then deleted
    assert attempts_of(path, "dead") == seen  # and never added twice


def test_a_survivor_keeps_appending_and_the_next_open_recovers_the_dead_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    survivor = SQLiteEventStore(path, durability="process", writer="survivor")
    try:

        async def append(first: int, last: int) -> None:
            for n in range(first, last + 1):
                await survivor.wait_committed(survivor.append(attempt("survivor", n)))

        anyio.run(append, 1, 10)
        seen = run_child(path, "dead", 20, 30)
        anyio.run(append, 11, 20)  # the dead one's journal does not disturb it
        assert survivor.errors == 0
        assert len(journals(tmp_path)) == 2  # the survivor's and the dead one's

        with contextlib.closing(SQLiteEventStore(path, create=False)) as reopened:
            events = list(reopened.read())
        dead = [e for e in events if e.call_id == "dead"]
        assert [e.attempt for e in dead] == seen  # type: ignore[attr-defined]
        assert [event.seq for event in events] == list(range(1, len(events) + 1))
        # The tail it never moved comes after what the survivor wrote meanwhile.
        survivor_seqs = [e.seq for e in events if e.call_id == "survivor"]
        assert min(e.seq for e in dead[20:]) > max(survivor_seqs)
        assert len(journals(tmp_path)) == 1  # the survivor's own, left alone

        anyio.run(append, 21, 30)
        assert survivor.flush()
    finally:
        survivor.close()
    assert attempts_of(path, "survivor") == list(range(1, 31))
    assert attempts_of(path, "dead") == seen
    assert journals(tmp_path) == []


def test_the_journal_of_a_live_process_is_never_recovered(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CHILD, str(path), "alive", "5", "15", "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        lines = [child.stdout.readline() for _ in range(21)]
        assert lines[-1] == "held\n", (lines, child.stderr)
        # Opened (twice) while its owner lives: the journaled events are its owner's to move.
        assert attempts_of(path, "alive") == list(range(1, 6))
        assert attempts_of(path, "alive") == list(range(1, 6))
        assert len(journals(tmp_path)) == 1
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert out == "closed\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert journals(tmp_path) == []
    assert attempts_of(path, "alive") == list(range(1, 21))  # once each


def test_another_store_of_the_same_process_leaves_a_live_journal_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    owner = SQLiteEventStore(path, durability="process", writer="owner")
    gate = stall(owner)
    try:
        for n in range(1, 4):
            anyio.run(owner.wait_committed, owner.append(attempt("owner", n)))
        assert len(journals(tmp_path)) == 1
        SQLiteEventStore(path).close()  # opens the log: finds the journal locked, by its owner
        assert len(journals(tmp_path)) == 1
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        gate.set()
        owner.close()
    assert attempts_of(path, "owner") == [1, 2, 3]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    opened = SQLiteEventStore(tmp_path / "events.sqlite3", durability="process")
    yield opened
    opened.close()


@pytest.mark.anyio
async def test_a_read_through_the_store_sees_what_wait_committed_returned_for(
    store: SQLiteEventStore,
) -> None:
    gate = stall(store)
    with anyio.fail_after(5):  # the writer is stalled: the journal alone makes them durable
        for n in range(1, 4):
            await store.wait_committed(store.append(attempt("me", n)))
    assert store.journal_files
    journaled = Path(store.journal_files[0]).read_bytes()  # noqa: ASYNC240 - a test
    assert journaled.count(b'"call_id":"me"') == 3
    release = threading.Timer(0.2, gate.set)
    release.start()
    try:
        assert store.last_seq() == 3  # waits for the writer to move them
    finally:
        release.cancel()
        gate.set()
    store._write = type(store)._write.__get__(store)  # type: ignore[method-assign]
    for n, read in enumerate(
        [
            store.count,
            lambda: store.query("SELECT count(*) FROM events")[0][0],
            lambda: len(list(store.read())),
            lambda: store.snapshots.take("periodic"),
        ],
        start=4,
    ):
        await store.wait_committed(store.append(attempt("me", n)))
        assert read() == n  # the writer lingers: without waiting, none would be there yet


@pytest.mark.anyio
async def test_close_leaves_no_journal_and_no_record_of_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    reader = SQLiteEventStore(path, durability="process")
    assert reader.count() == 0
    reader.close()
    assert journals(tmp_path) == []  # a store that appends nothing creates none
    store = SQLiteEventStore(path, durability="process")
    for n in range(1, 6):
        await store.wait_committed(store.append(attempt("me", n)))
    assert len(journals(tmp_path)) == 1
    store.close()
    assert journals(tmp_path) == []
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        keys = [key for (key,) in conn.execute("SELECT key FROM meta")]
    assert not [key for key in keys if key.startswith("journal:")]
    assert attempts_of(path, "me") == [1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_a_locked_log_never_holds_up_a_caller_and_drops_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="process", lock_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another replica holds the write lock
        with anyio.fail_after(2):  # each caller returns without waiting for the lock
            for n in range(1, 51):
                await store.wait_committed(store.append(attempt("me", n)))
        blocker.execute("COMMIT")
        assert store.flush()
        assert (store.dropped, store.count()) == (0, 50)
    finally:
        blocker.close()
        store.close()
    assert attempts_of(path, "me") == list(range(1, 51))


def test_a_log_locked_until_close_keeps_the_journal_for_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="process", lock_timeout=0.02, close_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        for n in range(1, 11):
            anyio.run(store.wait_committed, store.append(attempt("me", n)))
        store.close()  # gives up on the log, not on the events: they are in the journal
        assert store.dropped == 0
        assert len(journals(tmp_path)) == 1
        blocker.execute("COMMIT")
    finally:
        blocker.close()
        store.close()
    assert attempts_of(path, "me") == list(range(1, 11))
    assert journals(tmp_path) == []


@pytest.mark.anyio
async def test_concurrent_callers_share_commits_and_keep_their_order(
    store: SQLiteEventStore,
) -> None:
    commits = 0
    write = store._write

    def counted(batch: list[object]) -> None:
        nonlocal commits
        commits += 1
        write(batch)  # type: ignore[arg-type]

    store._write = counted  # type: ignore[method-assign]
    callers = 200

    async def call(n: int) -> None:
        ticket = store.append(CallStarted(at=AT, call_id=f"c-{n}", order=("primary",)))
        await anyio.lowlevel.checkpoint()  # the others append too before anyone waits
        await store.wait_committed(ticket)

    async with anyio.create_task_group() as group:
        for n in range(callers):
            group.start_soon(call, n)
    events = list(store.read())
    assert sorted(event.call_id for event in events) == sorted(f"c-{n}" for n in range(callers))  # type: ignore[attr-defined]
    assert [event.seq for event in events] == list(range(1, callers + 1))
    assert 0 < commits < callers / 10


def write_dead_journal(log: Path, writer: str, events: list[AttemptStarted]) -> Path:
    """A journal as a process leaves it when it dies: its records, then nothing."""
    journal = Journal(str(log), writer)
    journal.write([(n, encode(event)) for n, event in enumerate(events, 1)])
    (path,) = journal.paths
    journal.close(keep=True)
    return Path(path)


def test_a_record_cut_short_or_damaged_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    file = write_dead_journal(path, "dead", [attempt("dead", n) for n in range(1, 4)])
    lines = file.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"attempt":2', b'"attempt":9')  # fails its CRC
    whole = b"\n".join(lines)
    torn = _journal.record(4, encode(attempt("dead", 4)))[:-9]  # its write(2) cut short
    file.write_bytes(whole + torn)
    assert attempts_of(path, "dead") == [1, 3]
    assert journals(tmp_path) == []


def test_an_opener_that_cannot_write_the_log_keeps_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    write_dead_journal(path, "dead", [attempt("dead", 1)])
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with contextlib.closing(SQLiteEventStore(path, create=False, lock_timeout=0.05)) as store:
            assert store.errors == 1
            assert "dead" in (store.last_error or "")
        assert time.monotonic() - started < 5
        assert len(journals(tmp_path)) == 1
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert attempts_of(path, "dead") == [1]


def test_without_flock_a_caller_commits_its_own_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal, "fcntl", None)
    path = tmp_path / "events.sqlite3"
    with contextlib.closing(SQLiteEventStore(path, durability="process")) as store:
        anyio.run(store.wait_committed, store.append(attempt("me", 1)))
        assert store.journal_files == []
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    assert journals(tmp_path) == []


def test_journal_files_are_private_and_named_apart_from_sqlite_s(store: SQLiteEventStore) -> None:
    anyio.run(store.wait_committed, store.append(attempt("me", 1)))
    (name,) = store.journal_files
    assert not name.endswith(("-journal", "-wal", "-shm"))
    assert os.stat(name).st_mode & 0o777 == 0o600


def test_a_full_journal_file_is_followed_by_another_and_deleted_once_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal, "ROTATE_BYTES", 1_000)  # a few records per file
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="process")
    try:
        gate = stall(store)
        for n in range(1, 31):
            anyio.run(store.wait_committed, store.append(attempt("me", n)))
        assert len(journals(tmp_path)) > 3  # nothing moved: every file is kept
        gate.set()
        assert store.flush()
        store.append(attempt("me", 31))  # the writer deletes the moved files after a batch
        assert store.flush()
        assert len(journals(tmp_path)) == 1  # the current one
    finally:
        gate.set()
        store.close()
    assert journals(tmp_path) == []
    assert attempts_of(path, "me") == list(range(1, 32))


def test_a_dead_process_s_journal_files_are_recovered_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_journal, "ROTATE_BYTES", 1_000)
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    for n in range(1, 41):
        journal.write([(n, encode(attempt("dead", n)))])
    assert len(journal.paths) > 3
    journal.close(keep=True)
    assert attempts_of(path, "dead") == list(range(1, 41))
    assert journals(tmp_path) == []


def test_another_store_of_the_process_reads_what_one_saw_committed(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    owner = SQLiteEventStore(path, durability="process")
    reader = SQLiteEventStore(path, create=False)
    gate = stall(owner)
    release = threading.Timer(0.2, gate.set)
    try:
        anyio.run(owner.wait_committed, owner.append(attempt("me", 1)))
        release.start()
        assert reader.count() == 1  # waits for the owner's writer (``replay(path)`` alike)
    finally:
        release.cancel()
        gate.set()
        reader.close()
        owner.close()
