"""The SQLite event store: the backend contract (in memory and on file), then what only a file
log does: opening rules, permissions, durability settings, crashes, several processes, locks."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devs.risks.multi_model_failover.core.errors import EventLogError, SchemaVersionError
from devs.risks.multi_model_failover.core.events import SCHEMA_VERSION, AttemptStarted
from devs.risks.multi_model_failover.storage import _journal
from devs.risks.multi_model_failover.storage._group_commit import at_micros
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore, _at_text

from .contract import EventStoreContract, attempt

pytestmark = pytest.mark.anyio

REFUSE = (
    "CREATE TRIGGER refuse_writes BEFORE INSERT ON events "
    "BEGIN SELECT RAISE(ABORT, 'writes refused by the test'); END"
)


def connect(path: Path | str) -> sqlite3.Connection:
    """A second, independent connection to a log file (as another process would have)."""
    return sqlite3.connect(path, isolation_level=None, timeout=10)


def store_on(path: Path, **options: Any) -> SQLiteEventStore:
    """A store on ``path`` that waits long enough for locks not to fail a test by accident."""
    options.setdefault("lock_timeout", 10.0)
    return SQLiteEventStore(path, **options)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


class TestInMemoryStore(EventStoreContract):
    """The contract on the default store: SQLite in memory."""

    waits_for_commits = False

    def make_store(self, durability: str = "process", **options: Any) -> SQLiteEventStore:
        return SQLiteEventStore(durability=durability, **options)

    def corrupt(self, store: Any, seq: int) -> None:
        store.query('UPDATE events SET body = \'{"type": "nonsense\' WHERE seq = ?', (seq,))

    def overwrite(self, store: Any, seq: int, type_: str, body: str) -> None:
        store.query("UPDATE events SET type = ?, body = ? WHERE seq = ?", (type_, body, seq))

    @contextlib.contextmanager
    def refuse_writes(self, store: Any) -> Iterator[None]:
        store.query(REFUSE)
        try:
            yield
        finally:
            store.query("DROP TRIGGER refuse_writes")

    @contextlib.contextmanager
    def hold_writes(self, store: Any) -> Iterator[None]:
        # In memory there is no other connection: hold the store's own statement lock.
        with store._lock:
            yield


class TestFileStore(EventStoreContract):
    """The contract on a log file; faults come from a second connection to the file."""

    close_races = 25  # the race is the shared writer's: the in-memory store runs it 100 times

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path
        self.made = 0

    # A file log in ``process`` mode journals its callers' events: they return at once. (A
    # strict store, and every ``power`` one, waits; ``TestFileStoreWithoutJournal`` runs the
    # waiting tests in ``process`` mode.)
    waits_for_commits = False

    def make_store(self, durability: str = "process", **options: Any) -> SQLiteEventStore:
        self.made += 1
        return store_on(self.folder / f"log-{self.made}.sqlite3", durability=durability, **options)

    async def test_close_gives_up_on_a_log_that_stays_unwritable(self) -> None:
        if self.waits_for_commits:
            await super().test_close_gives_up_on_a_log_that_stays_unwritable()
            return
        # The journaling store gives up on the log, not on its events: the journal keeps them
        # and the next store to open the log adds them. The strict one (no journal) drops.
        store = self.make_store("process", close_timeout=0.2)
        strict = self.make_store("process", close_timeout=0.2, strict=True)
        with self.refuse_writes(store), self.refuse_writes(strict):
            for n in range(3):
                await store.wait_committed(store.append(attempt("c", n)))
            strict_ticket = strict.append(attempt("c"))
            async with anyio.create_task_group() as group:
                group.start_soon(store.aclose)
                group.start_soon(strict.aclose)
            assert (store.dropped, strict.dropped) == (0, 1)
            with pytest.raises(EventLogError):
                await strict.wait_committed(strict_ticket)
            assert store.count() == 0
        reopened = self.reopen(store)
        assert [(e.seq, e.attempt) for e in reopened.read()] == [(1, 0), (2, 1), (3, 2)]  # type: ignore[attr-defined]
        reopened.close()

    def reopen(self, store: Any) -> SQLiteEventStore:
        return store_on(store.path)

    def peer(self, store: Any) -> SQLiteEventStore:
        return store_on(store.path, durability="buffered")

    def corrupt(self, store: Any, seq: int) -> None:
        with contextlib.closing(connect(store.path)) as conn:
            conn.execute('UPDATE events SET body = \'{"type": "nonsense\' WHERE seq = ?', (seq,))

    def overwrite(self, store: Any, seq: int, type_: str, body: str) -> None:
        with contextlib.closing(connect(store.path)) as conn:
            conn.execute("UPDATE events SET type = ?, body = ? WHERE seq = ?", (type_, body, seq))

    @contextlib.contextmanager
    def refuse_writes(self, store: Any) -> Iterator[None]:
        with contextlib.closing(connect(store.path)) as conn:
            conn.execute(REFUSE)
            try:
                yield
            finally:
                conn.execute("DROP TRIGGER refuse_writes")

    @contextlib.contextmanager
    def hold_writes(self, store: Any) -> Iterator[None]:
        with contextlib.closing(connect(store.path)) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")


class TestFileStoreWithoutJournal(TestFileStore):
    """The contract on a log file where ``fcntl`` is missing (Windows): no journal, a caller
    in ``process`` mode commits its own events or waits for the writer's group commit."""

    waits_for_commits = True

    @pytest.fixture(autouse=True)
    def _no_journal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_journal, "fcntl", None)


# -- opening -------------------------------------------------------------------------------


def test_a_new_log_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.sqlite3"
    store = SQLiteEventStore(path)
    store.append(attempt("c"))
    assert store.flush()
    for file in (path, Path(f"{path}-wal")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    store.close()


def test_a_missing_log_is_not_created_when_create_is_false(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "events.sqlite3"
    with pytest.raises(EventLogError, match="does not exist"):
        SQLiteEventStore(path, create=False)
    assert not path.parent.exists()


def test_a_directory_is_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="directory"):
        SQLiteEventStore(tmp_path)


@pytest.mark.parametrize("create", [True, False])
def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, " * 100)
    with pytest.raises(EventLogError, match="not an SQLite database"):
        SQLiteEventStore(path, create=create)
    assert path.read_text() == "not a database, " * 100


def open_handles(path: Path) -> list[str]:
    """This process's file descriptors open on ``path`` (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor of the listing itself is gone
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("create", [True, False])
def test_a_refused_file_is_not_left_open(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, " * 100)
    with pytest.raises(EventLogError) as refused:  # its traceback holds what the store opened
        SQLiteEventStore(path, create=create)
    assert open_handles(path) == [], refused.value


@pytest.mark.parametrize("create", [True, False])
def test_an_sqlite_file_of_something_else_is_refused(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "other.sqlite3"
    with contextlib.closing(connect(path)) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(EventLogError, match="not a failover event log"):
        SQLiteEventStore(path, create=create)
    with contextlib.closing(connect(path)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("customers",)]


def test_the_schema_version_is_stored_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    with contextlib.closing(connect(path)) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(version) == SCHEMA_VERSION
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    for create in (True, False):
        with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
            SQLiteEventStore(path, create=create)


def test_an_unknown_durability_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="durability must be one of"):
        SQLiteEventStore(durability="eventually")


@pytest.mark.parametrize(
    ("durability", "synchronous"), [("buffered", 1), ("process", 1), ("power", 2)]
)
def test_durability_sets_wal_and_the_sync_level(
    tmp_path: Path, durability: str, synchronous: int
) -> None:
    store = SQLiteEventStore(tmp_path / "events.sqlite3", durability=durability)
    assert store.query("PRAGMA journal_mode") == [("wal",)]
    assert store.query("PRAGMA synchronous") == [(synchronous,)]  # 1 NORMAL, 2 FULL
    store.close()


# -- the columns readers query -------------------------------------------------------------


def test_the_indexed_columns_mirror_the_event(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.sqlite3", durability="buffered")
    at = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    store.append(AttemptStarted(at=at, call_id="call-1", model_id="primary", attempt=1))
    store.append(attempt("call-2"))
    assert store.flush()
    assert store.query("SELECT seq, type, at, call_id, model_id, writer FROM events")[0] == (
        1,
        "attempt_started",
        at_micros(at),
        "call-1",
        "primary",
        store.writer_key,
    )
    assert store.query("SELECT at, writer FROM events_view WHERE seq = 1") == [
        ("2025-03-04T05:06:07.891Z", store.writer)
    ]
    found = store.read(where="call_id = ? AND type = ?", params=("call-2", "attempt_started"))
    assert [e.seq for e in found] == [2]
    store.close()
    assert store.query("SELECT count(*) FROM events") == [(2,)]  # a closed file log reopens


def test_a_bad_query_is_an_event_log_error() -> None:
    store = SQLiteEventStore()
    with pytest.raises(EventLogError, match="no such column"):
        store.query("SELECT colour FROM events")
    store.close()


@given(
    at=st.datetimes(
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
        )
    )
    | st.datetimes()
)
def test_the_at_column_is_the_iso_form_of_the_time(at: datetime) -> None:
    assert _at_text(at) == at.isoformat(timespec="microseconds")


def test_the_at_column_of_a_datetime_subclass_is_its_iso_form() -> None:
    class FrozenDatetime(datetime):  # what freezegun hands out
        pass

    at = FrozenDatetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert _at_text(at) == "2024-05-01T12:00:00.000000+00:00"


def test_an_event_that_cannot_be_stored_is_dropped_and_the_log_goes_on(
    log_records: list[dict[str, Any]],
) -> None:
    store = SQLiteEventStore(durability="buffered")
    broken = AttemptStarted(at="yesterday", call_id="c", model_id="m", attempt=1)  # type: ignore[arg-type]
    store.append(attempt("c", 1))
    store.append(broken)
    store.append(attempt("c", 2))
    assert [e.seq for e in store.read()] == [1, 2]
    assert (store.dropped, store.errors) == (1, 1)
    assert any("cannot be stored" in str(r["message"]) for r in log_records)
    store.close()


# -- faults --------------------------------------------------------------------------------


def test_a_locked_log_delays_events_and_counts_errors(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="buffered", lock_timeout=0.05)
    with contextlib.closing(store), contextlib.closing(connect(path)) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        for n in range(1, 101):
            store.append(attempt("c", n))  # appends go on while the file is locked
        assert not store.flush(timeout=10)  # returns as soon as a write has failed
        assert store.errors >= 1
        assert store.count() == 0
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))  # the lock lasts ~0.5 s
        locker.execute("ROLLBACK")
        wait_until(lambda: store.count() == 100)
        assert [e.seq for e in store.read()] == list(range(1, 101))
        assert store.dropped == 0

        def messages() -> list[tuple[str, str]]:
            return [(r["level"].name, str(r["message"])) for r in log_records]

        # The writer thread logs "writable again" just after the commit the count above sees.
        wait_until(lambda: ("WARNING", f"event log {path} writable again") in messages())
        assert any(
            level == "ERROR" and "write failed" in m and str(path) in m for level, m in messages()
        )


def test_waiters_on_two_event_loops_at_once() -> None:
    store = SQLiteEventStore()

    def run(backend: str) -> None:
        async def main() -> None:
            for n in range(1, 101):
                await store.wait_committed(store.append(attempt(backend, n)))

        anyio.run(main, backend=backend)

    threads = [threading.Thread(target=run, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    events = list(store.read())
    assert [e.seq for e in events] == list(range(1, 201))
    for backend in ("asyncio", "trio"):
        mine = [e.attempt for e in events if isinstance(e, AttemptStarted) and e.call_id == backend]
        assert mine == list(range(1, 101))
    assert store.waiting == 0
    store.close()


# -- crashes and other processes -----------------------------------------------------------

CRASHING_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
import anyio
from devs.risks.multi_model_failover.core.events import AttemptStarted
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

path, how = sys.argv[1], sys.argv[2]
store = SQLiteEventStore(path, durability="process")
seen = 0

def die():
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)

async def writer(name):
    global seen
    for n in range(1, 100_000):
        event = AttemptStarted(at=datetime.now(UTC), call_id=name, model_id="m", attempt=n)
        await store.wait_committed(store.append(event))
        print(name, n, flush=True)
        seen += 1
        if seen == 300:
            die()

async def main():
    async with anyio.create_task_group() as group:
        for t in range(4):
            group.start_soon(writer, f"w{t}")

anyio.run(main)
"""


@pytest.mark.parametrize(("how", "returncode"), [("exit", 3), ("kill", -9)])
def test_every_event_seen_committed_survives_a_crash(
    tmp_path: Path, how: str, returncode: int
) -> None:
    path = tmp_path / "events.sqlite3"
    child = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CRASHING_WRITER, str(path), how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == returncode, child.stderr
    seen = {(name, int(n)) for name, n in (line.split() for line in child.stdout.splitlines())}
    assert len(seen) == 300
    store = SQLiteEventStore(path, create=False)
    events = list(store.read())
    stored = {(e.call_id, e.attempt) for e in events if isinstance(e, AttemptStarted)}
    assert seen <= stored
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    store.close()


OTHER_PROCESS = """
import sys
from datetime import UTC, datetime
from devs.risks.multi_model_failover.core.events import AttemptStarted
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

store = SQLiteEventStore(sys.argv[1], durability="process")
print("ready", flush=True)
sys.stdin.readline()
for n in range(1, 1001):
    store.append(AttemptStarted(at=datetime.now(UTC), call_id="child", model_id="m", attempt=n))
    if n % 10 == 0:
        store.flush()
store.close()
print(store.writer, store.errors, store.dropped, flush=True)
"""


def test_two_processes_share_one_log(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="process")
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", OTHER_PROCESS, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    assert child.stdout.readline() == "ready\n"
    child.stdin.write("go\n")
    child.stdin.flush()
    for n in range(1, 1001):
        store.append(attempt("parent", n))
        if n % 10 == 0:
            store.flush()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    child_writer, child_errors, child_dropped = out.split()
    assert (child_errors, child_dropped) == ("0", "0")
    assert store.flush()

    events = list(store.read())
    assert [e.seq for e in events] == list(range(1, 2001))
    for name in ("parent", "child"):
        mine = [e.attempt for e in events if isinstance(e, AttemptStarted) and e.call_id == name]
        assert mine == list(range(1, 1001))
    others, cursor = store.read_others(0)
    assert [(e.call_id, e.attempt) for e in others if isinstance(e, AttemptStarted)] == [
        ("child", n) for n in range(1, 1001)
    ]
    assert cursor == 2000
    assert store.query("SELECT count(*) FROM events_view WHERE writer = ?", (child_writer,)) == [
        (1000,)
    ]
    store.close()


def test_a_second_store_on_a_file_sees_committed_events(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="process")
    reader = SQLiteEventStore(path, create=False)

    async def append_and_wait() -> None:
        await store.wait_committed(store.append(attempt("c")))

    anyio.run(append_and_wait)
    assert reader.count() == 1  # committed means visible to any other connection
    reader.close()
    store.close()
    assert os.path.exists(path)


# -- the writer's name and a log file that goes away -----------------------------------------


def test_each_event_carries_the_writer_name(tmp_path: Path) -> None:
    named = SQLiteEventStore(tmp_path / "events.sqlite3", writer="replica-a")
    default = SQLiteEventStore(tmp_path / "events.sqlite3")
    other = SQLiteEventStore(tmp_path / "events.sqlite3")
    host = socket.gethostname().split(".")[0]
    assert re.fullmatch(rf"{re.escape(host[:24])}-{os.getpid()}-[0-9a-f]{{6}}", default.writer)
    assert other.writer != default.writer  # two stores of one process tell apart
    named.append(attempt("c"))
    assert named.flush()  # before the other appends: two writer threads race otherwise
    default.append(attempt("c"))
    assert default.flush()
    assert named.query("SELECT writer FROM events_view ORDER BY seq") == [
        ("replica-a",),
        (default.writer,),
    ]
    for store in (named, default, other):
        store.close()


@pytest.mark.parametrize("suffixes", [("",), ("", "-wal", "-shm")], ids=["file", "file+wal+shm"])
def test_a_deleted_log_file_is_reported_and_started_again(
    tmp_path: Path, log_records: list[dict[str, Any]], suffixes: tuple[str, ...]
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="buffered")
    for n in range(1, 4):
        store.append(attempt("before", n))
    assert store.flush()
    for suffix in suffixes:  # a WAL left behind must not leak old pages into the new file
        Path(f"{path}{suffix}").unlink()
    store.append(attempt("after", 1))
    store.append(attempt("after", 2))
    assert store.flush()
    assert store.errors == 1
    assert "moved or deleted" in str(store.last_error)
    lines = [str(r["message"]) for r in log_records if r["level"].name == "ERROR"]
    assert any(
        str(path) in m and "deleted" in m and "3 event(s) are no longer at that path" in m
        for m in lines
    )
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reader = SQLiteEventStore(path, create=False)
    assert [(e.call_id, e.seq) for e in reader.read()] == [("after", 1), ("after", 2)]
    reader.close()


def test_a_replaced_log_file_is_reported_and_written_to(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path, durability="buffered")
    store.append(attempt("old"))
    assert store.flush()
    elsewhere = tmp_path / "restored.sqlite3"
    with SQLiteEventStore(elsewhere, durability="buffered") as restored:
        restored.append(attempt("restored"))
    os.replace(elsewhere, path)  # e.g. a backup put back in place
    store.append(attempt("new"))
    assert store.flush()
    assert store.errors == 1
    assert any("replaced" in str(r["message"]) for r in log_records)
    assert [e.call_id for e in store.read()] == ["restored", "new"]
    store.close()


@pytest.mark.parametrize("create", [True, False], ids=["writer", "reader"])
def test_someone_elses_database_is_refused_and_left_as_it_was(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    before = path.read_bytes()
    with pytest.raises(EventLogError, match="an SQLite database but not a failover event log"):
        SQLiteEventStore(path, create=create)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()
    with contextlib.closing(connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
