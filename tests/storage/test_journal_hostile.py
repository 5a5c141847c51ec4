"""Crash tests against the ``process`` journal (hostile review): real processes SIGKILLed at
random moments, recovery cut short, journals split between openers, ``fork``, a folder that
cannot be written. Every test asserts what a user of ``process`` durability may rightly expect:
nothing a caller saw returned is lost, duplicated or reordered, and opening a log never fails
because of a journal."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from devs.risks.multi_model_failover.core.events import AttemptStarted, encode
from devs.risks.multi_model_failover.storage import _journal
from devs.risks.multi_model_failover.storage._journal import SUFFIX, Journal
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

AT = datetime(2026, 3, 1, tzinfo=UTC)
_LINE = re.compile(r"(r\d+-w\d+) (\d+)")


def attempt(name: str, n: int) -> AttemptStarted:
    return AttemptStarted(at=AT, call_id=name, model_id="m", attempt=n)


def journals(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.endswith(SUFFIX))


def stored(path: Path) -> list[tuple[str, int]]:
    """(call id, attempt) of every attempt in the log, in seq order; seq must be gap-free.
    Opening the log folds in the journals of dead processes."""
    with contextlib.closing(SQLiteEventStore(path, create=False)) as store:
        events = list(store.read())
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    return [(e.call_id, e.attempt) for e in events if isinstance(e, AttemptStarted)]


def check_exactly_once_in_order(found: list[tuple[str, int]], seen: set[tuple[str, int]]) -> None:
    """Every event a caller saw returned is there, none twice, each writer's in its order."""
    assert seen <= set(found), sorted(seen - set(found))[:5]
    assert len(found) == len(set(found)), "an event was stored twice"
    by_name: dict[str, list[int]] = {}
    for name, n in found:
        by_name.setdefault(name, []).append(n)
    for name, numbers in by_name.items():
        assert numbers == sorted(numbers), f"{name} reordered"


# A busy writer: ``tasks`` tasks call append + wait_committed in a loop and print each event
# once it returned, until SIGKILLed from outside. Its names carry ``round`` so that the rounds of
# a kill/reopen cycle on one log are told apart.
BUSY = """
import sys
from datetime import UTC, datetime
import anyio
from devs.risks.multi_model_failover.core.events import AttemptStarted
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

path, backend, rnd, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = SQLiteEventStore(path, durability="process")

async def writer(name):
    for n in range(1, 10_000_000):
        event = AttemptStarted(at=datetime.now(UTC), call_id=name, model_id="m", attempt=n)
        await store.wait_committed(store.append(event))
        print(name, n, flush=True)

async def main():
    print("ready", flush=True)
    async with anyio.create_task_group() as group:
        for t in range(tasks):
            group.start_soon(writer, f"r{rnd}-w{t}")

anyio.run(main, backend=backend)
"""


def kill_busy(
    path: Path, backend: str, rnd: int, delay: float, tasks: int = 8
) -> set[tuple[str, int]]:
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", BUSY, str(path), backend, str(rnd), str(tasks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    return returned(out)


def returned(out: str) -> set[tuple[str, int]]:
    """The events a killed child printed as returned: whole lines only (a print cut by the
    kill can leave a torn fragment, which proves nothing)."""
    found = (_LINE.fullmatch(line) for line in out.split("\n")[:-1])
    return {(match[1], int(match[2])) for match in found if match}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkill_at_random_moments_of_a_busy_writer_loses_and_repeats_nothing(
    tmp_path: Path, backend: str
) -> None:
    """Guard: kill/reopen cycles on one log, each new process recovering the last one's
    journal at its open and then appending itself."""
    path = tmp_path / "events.sqlite3"
    rng = random.Random(f"busy-{backend}")
    seen: set[tuple[str, int]] = set()
    for rnd in range(3):
        seen |= kill_busy(path, backend, rnd, rng.uniform(0.05, 0.4))
    assert seen
    check_exactly_once_in_order(stored(path), seen)
    assert journals(tmp_path) == []


def test_two_processes_sharing_a_log_killed_in_turn_lose_nothing(tmp_path: Path) -> None:
    """Guard: two busy writers on one log at once, both SIGKILLed; the next open recovers both."""
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    children = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", BUSY, str(path), backend, str(rnd), "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rnd, backend in enumerate(["asyncio", "trio"])
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    time.sleep(0.3)
    seen: set[tuple[str, int]] = set()
    for child in children:
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        seen |= returned(out)
    check_exactly_once_in_order(stored(path), seen)
    assert journals(tmp_path) == []


# Opens the log (which recovers the dead journal beside it) and keeps appending, until killed.
RECOVERER = """
import sys
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore
print("opening", flush=True)
store = SQLiteEventStore(sys.argv[1], durability="process", writer="recoverer")
print("opened", flush=True)
sys.stdin.readline()
"""


def test_a_kill_during_recovery_then_the_next_open_adds_each_record_once(tmp_path: Path) -> None:
    """Guard: the recovering process SIGKILLed at random moments of its open; the next open
    still holds every record of the dead journal exactly once and in order."""
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    records = [(n, encode(attempt("dead", n))) for n in range(1, 30_001)]
    for start in range(0, len(records), 1_000):
        journal.write(records[start : start + 1_000])
    journal.close(keep=True)
    rng = random.Random("recovery")
    for _ in range(3):
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", RECOVERER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "opening\n"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert stored(path) == [("dead", n) for n in range(1, 30_001)]
    assert journals(tmp_path) == []


def test_a_dead_journal_split_between_two_openers_keeps_its_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEFECT. A dead writer's journal spans several files (rotation at its size limit; a kill
    right after a rotation leaves the older file unmoved). Two processes open the log at once:
    the first locks the oldest file and reads it (8 MiB takes a while) while the second locks
    the newer ones it finds unlocked, folds them, and deletes them. The locks are per file, so
    each opener folds part of one writer's journal: here the newer records land before the
    older ones. (Had the first opener read the ``meta`` row between the second's fold and its
    clean-up, it would have skipped its own records as already moved, and deleted them.)"""
    monkeypatch.setattr(_journal, "ROTATE_BYTES", 1_000)  # a few records per file
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    for n in range(1, 41):
        journal.write([(n, encode(attempt("dead", n)))])
    journal.close(keep=True)
    oldest = journals(tmp_path)[0]
    assert len(journals(tmp_path)) > 3
    first_opener = os.open(oldest, os.O_RDONLY)  # the first opener, mid-way through its read
    try:
        fcntl.flock(first_opener, fcntl.LOCK_EX | fcntl.LOCK_NB)
        SQLiteEventStore(path, create=False).close()  # the second opener
    finally:
        os.close(first_opener)
    assert stored(path) == [("dead", n) for n in range(1, 41)]


# A parent opens a store and journals events, forks; the child closes its copy of the store
# (as any code that cleans up would) and exits; the parent goes on journaling (its writer
# cannot move the events: the test holds the log's lock) and is SIGKILLed.
FORKER = """
import os, signal, sys
from datetime import UTC, datetime
import anyio
from devs.risks.multi_model_failover.core.events import AttemptStarted
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

store = SQLiteEventStore(sys.argv[1], durability="process", writer="parent", close_timeout=0.2)

async def calls(first, last):
    for n in range(first, last + 1):
        event = AttemptStarted(at=datetime.now(UTC), call_id="parent", model_id="m", attempt=n)
        await store.wait_committed(store.append(event))

anyio.run(calls, 1, 3)
assert store.flush()
pid = os.fork()
if pid == 0:
    store.close()
    os._exit(0)
os.waitpid(pid, 0)
print("forked", flush=True)
sys.stdin.readline()
anyio.run(calls, 4, 6)
print("returned", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_closing_its_copy_does_not_delete_the_parent_s_live_journal(
    tmp_path: Path,
) -> None:
    """DEFECT. After ``fork`` the child holds a copy of the parent's store, with the parent's
    journal file descriptor and path. ``close()`` in the child sees nothing pending and deletes
    the journal file, which the parent, alive, goes on writing to: the calls the parent saw
    returned after that are in an unlinked file, and a crash of the parent loses them. (The
    docs only say the child keeps the lock while it lives.) The child should leave the parent's
    journal alone (``os.register_at_fork``: forget the journal in the child)."""
    path = tmp_path / "events.sqlite3"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", FORKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    assert child.stdout.readline() == "forked\n"
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the parent's writer cannot move 4..6
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=30)
        assert out == "returned\n", err
        assert child.returncode == -signal.SIGKILL
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert stored(path) == [("parent", n) for n in range(1, 7)]


def chattr(flag: str, target: Path) -> None:
    done = subprocess.run(["chattr", flag, str(target)], capture_output=True, check=False)  # noqa: S603, S607
    if done.returncode:
        pytest.skip(f"chattr {flag} not possible here: {done.stderr!r}")


def close_leaked_stores() -> None:
    """Close the stores a constructor that raised left open (else their ``__del__`` warns in a
    later test)."""
    for found in gc.get_objects():
        if isinstance(found, SQLiteEventStore) and not found.closed:
            found.close()


def test_opening_a_log_whose_folder_is_read_only_does_not_raise(tmp_path: Path) -> None:
    """DEFECT. A process died with a journal beside the log (its ``-wal`` and ``-shm`` still
    there, as after any crash); the folder is then made read-only (``chattr +i``). The docs:
    "When the log cannot be written at that moment (... read-only), the open goes on, counts an
    error and logs it, and leaves the journal for the next open." Here the log file itself can
    be written, so the fold commits, but deleting the journal raises ``PermissionError``, which
    ``_journal._remove`` lets out (it suppresses only ``FileNotFoundError``) before closing the
    file: the open raises, the store is left unclosed, and the journal's descriptor (and lock)
    leak for the life of the process."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    journal.write([(1, encode(attempt("dead", 1)))])
    journal.close(keep=True)
    keep_wal = sqlite3.connect(path)  # the -wal and -shm a crash leaves behind
    try:
        keep_wal.execute("SELECT count(*) FROM events").fetchone()
        chattr("+i", folder)
        try:
            try:
                store = SQLiteEventStore(path, create=False)
            except OSError as exc:
                close_leaked_stores()
                pytest.fail(f"opening the log raised {exc!r}")
            with contextlib.closing(store):
                assert store.errors >= 0
                assert [(e.call_id, e.attempt) for e in store.read()] == [("dead", 1)]  # type: ignore[attr-defined]
        finally:
            chattr("-i", folder)
    finally:
        keep_wal.close()
    assert stored(path) == [("dead", 1)]
    assert journals(folder) == []


def test_a_log_locked_during_recovery_by_begin_exclusive_keeps_the_journal(tmp_path: Path) -> None:
    """Guard: a reader (the CLI opens with ``create=False``) meets a dead journal while another
    connection holds ``BEGIN EXCLUSIVE``: it opens anyway, quickly, and the journal is folded
    in by the next open, once."""
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    journal.write([(n, encode(attempt("dead", n))) for n in range(1, 6)])
    journal.close(keep=True)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with contextlib.closing(SQLiteEventStore(path, create=False, lock_timeout=0.05)) as store:
            assert store.errors == 1
        assert time.monotonic() - started < 3
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert stored(path) == [("dead", n) for n in range(1, 6)]
    assert stored(path) == [("dead", n) for n in range(1, 6)]  # not folded twice
    assert journals(tmp_path) == []


def test_the_cli_reads_a_dead_journal_s_events(tmp_path: Path) -> None:
    """Guard: ``failover verify`` in another process with a dead journal waiting: it folds the
    journal in before it reads, and leaves nothing behind."""
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    journal = Journal(str(path), "dead")
    journal.write([(1, encode(attempt("dead", 1)))])
    journal.close(keep=True)
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-m", "devs.risks.multi_model_failover.adapters.cli", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert journals(tmp_path) == []
    assert stored(path) == [("dead", 1)]


@pytest.mark.parametrize(
    ("location", "kwargs"),
    [("file", {"durability": "power"}), ("file", {"strict": True}), (":memory:", {})],
)
def test_power_strict_and_memory_stores_have_no_journal(
    tmp_path: Path, location: str, kwargs: dict[str, object]
) -> None:
    path = tmp_path / "events.sqlite3" if location == "file" else location
    with contextlib.closing(SQLiteEventStore(path, **kwargs)) as store:  # type: ignore[arg-type]
        anyio.run(store.wait_committed, store.append(attempt("me", 1)))
        assert store.journal_files == []
        assert journals(tmp_path) == []
        if location == "file":
            with contextlib.closing(sqlite3.connect(path)) as conn:
                assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
