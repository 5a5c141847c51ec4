"""The SQLite event store: one table of JSON events in one file (or in memory).

The queue, the group-committing writer thread, the waiters and the retries are shared with
every backend (``_group_commit``). Here: each batch is one ``BEGIN IMMEDIATE`` ... ``COMMIT``
numbering the events with a global, gap-free ``seq`` inside the transaction, so several
processes can share one file (WAL).

Durability modes:

- ``buffered``: callers never wait; a process crash may lose the events of the last moments.
- ``process`` (default): ``wait_committed`` returns once the event survives a crash of the
  process: on a file log, written to this store's journal (one write(2), see ``_journal``),
  from which the writer moves it into the log and the next opener recovers it after a crash;
  without ``fcntl`` (Windows) or for a strict store, committed (WAL, ``synchronous=NORMAL``).
- ``power``: as ``process`` with ``synchronous=FULL``: every commit is fsynced.

A write that fails (disk full, file locked longer than ``lock_timeout``, read-only) never fails
the model call: the batch is kept and retried with backoff (see ``_group_commit``).

A log file deleted, moved or replaced under a running process would otherwise go unnoticed:
SQLite keeps committing into the old inode, and every later event is lost with it. So before
each batch the writer compares the path's inode with the open file's; when they differ it counts
an error, logs it loudly and starts a new log file at the path (the events committed into the
old file are no longer at the path; the new file numbers its events from 1 again). Each log has
a random ``log_id`` in ``meta``: ``read_others``/``read_since`` read a log that is not the one
they read before from its start (see ``resets``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import sqlite_utils
from loguru import logger

from ..core.errors import EventLogError, SchemaVersionError
from ..core.events import SCHEMA_VERSION, Event, decode
from ..core.protocols import Durability
from ._group_commit import (
    INDEXED,
    TYPE_INDEX,
    GroupCommitStore,
    Prepared,
    as_text,
    body_text,
    compact,
    micros_text,
    prepare,
    schema_version,
)
from ._group_commit import at_text as _at_text  # noqa: F401 - tests import it from here
from ._journal import DeadJournal, Journal, dead_journals
from ._journal import available as journal_available
from .snapshots import SNAPSHOT_EVERY, SNAPSHOTS_CUT_INDEX, SNAPSHOTS_TABLE

_SNAPSHOTS: Final = SNAPSHOTS_TABLE.format(int="INTEGER", blob="BLOB")
# Row format 2 names each writer once; an event's ``writer`` column holds its id.
_WRITERS: Final = "CREATE TABLE writers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"
# For people reading the log with ``sqlite3``: the rows with ``at`` as text (to the
# millisecond) and each writer's name.
_VIEW: Final = """
CREATE VIEW events_view AS
SELECT events.seq, events.type,
       strftime('%Y-%m-%dT%H:%M:%fZ', events.at / 1000000.0, 'unixepoch') AS at,
       events.call_id, events.model_id, writers.name AS writer, events.body
FROM events LEFT JOIN writers ON writers.id = events.writer
"""
# An event's JSON from a row of either format (see ``_group_commit.event_text``, its Python
# twin). SQLite puts all of it together but the time (about twice as fast as in Python), which
# ``_row_text`` appends: SQLite's strftime would cost as much as the rest. A row of the older
# format comes as it is stored.
_EVENT_JSON: Final = """CASE WHEN typeof(at) != 'integer' OR typeof(body) != 'text'
OR substr(body, 1, 7) = '{"seq":' THEN body ELSE
'{"type":' || json_quote(type) || ',"seq":' || seq ||
coalesce(',"call_id":' || json_quote(call_id), '') ||
coalesce(',"model_id":' || json_quote(model_id), '') ||
CASE WHEN body = '{}' THEN '' ELSE ',' || substr(body, 2, length(body) - 2) END END"""
_MAX_SEQ: Final = "SELECT coalesce(max(seq), 0) FROM events"
_VERSION: Final = "SELECT value FROM meta WHERE key = 'schema_version'"
# The next seq follows the last event, or the last snapshot's cursor when an archive moved
# every event out (a seq is never given twice).
_LAST_SEQ: Final = (
    "SELECT max(coalesce((SELECT max(seq) FROM events), 0), "
    "coalesce((SELECT max(cursor) FROM snapshots), 0))"
)

MEMORY: Final = ":memory:"
# The journaling stores of this process. A read through any store of this process first waits
# for them to move what their callers saw committed into the same file: within a process every
# store reads what any of them returned from ``wait_committed`` (``replay(path)`` beside a live
# engine, say). Other processes see it once moved (see ``_journal``).
_JOURNALING: Final[weakref.WeakSet[SQLiteEventStore]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child shares its parent's journal files and their locks: only the parent may
    write, move or delete them (a child closing its copy of a store must not delete a journal
    the parent still writes to)."""
    for store in list(_JOURNALING):
        store._leave_journal_to_parent()
    _JOURNALING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_SYNCHRONOUS: Final = {"buffered": "NORMAL", "process": "NORMAL", "power": "FULL"}
_OPEN_TIMEOUT: Final = 5.0
# Rows per INSERT statement: 7 parameters each, under SQLite's limit on parameters per
# statement (32,766 since 3.32, 999 before).
_CHUNK: Final = 500 if sqlite3.sqlite_version_info >= (3, 32, 0) else 140
# How far a journal was moved into the log: its last record's ticket (see ``_journal``).
_JOURNAL_MOVED: Final = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_INSERT: Final = (
    "INSERT INTO events (seq, type, at, call_id, model_id, writer, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (the log may name models and callers)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file stands where a folder of the path should be
        raise EventLogError(
            f"cannot create event log {path}: {exc.filename} is a file, not a directory"
        ) from exc
    except OSError as exc:
        raise EventLogError(f"cannot create event log {path}: {_reason(exc, path)}") from exc
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass  # another process created it first: it is opened as an existing log
    except OSError as exc:
        raise EventLogError(f"cannot create event log {path}: {_reason(exc, path)}") from exc


def _reason(exc: OSError, path: Path) -> str:
    """``exc`` in a few words, naming the file it is about when that is not the log itself."""
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename not in (None, str(path)) else reason


def _connect(path: str, *, create: bool) -> sqlite3.Connection:
    if path == MEMORY:
        return sqlite3.connect(MEMORY, check_same_thread=False, isolation_level=None)
    if not path.strip():
        raise EventLogError(f"no event log named: the path is {path!r}")
    file = Path(path)
    if not file.exists():
        if not create:
            raise EventLogError(f"no event log at {path}: the file does not exist")
        _create_private_file(file)
    elif file.is_dir():
        raise EventLogError(f"{path} is a directory, not an event log")
    elif not file.is_file():
        raise EventLogError(f"{path} is a device, pipe or socket, not an event log file")
    try:
        conn = sqlite3.connect(
            file, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT
        )
    except sqlite3.DatabaseError as exc:
        raise EventLogError(f"{path} is not an SQLite database ({exc})") from exc
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise EventLogError(f"{path} is not an SQLite database ({exc})") from exc
    return conn


def _add_cut_index(conn: sqlite3.Connection) -> None:
    """Give a log from before it the index that finds its cut; a log that cannot be written
    here (read-only file or folder) goes on without it: loads then scan, slower, same."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'snapshots_cut'"
    ).fetchone()
    if found is None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(SNAPSHOTS_CUT_INDEX)


def _ensure_schema(db: sqlite_utils.Database, path: str, *, create: bool) -> int:
    """Create the tables on a new log; refuse a file that is not ours or is newer. Returns the
    log's schema version."""
    conn = db.conn
    tables = set(db.table_names())
    if "events" in tables and "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = schema_version(path, row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} was written with event-log schema version {version}; this version "
                f"reads up to {SCHEMA_VERSION}: upgrade devs-risks-multi-model-failover"
            )
        if create and "snapshots" not in tables:  # a log from before snapshots
            conn.execute(_SNAPSHOTS)
        if create:
            _add_cut_index(conn)
        return version
    if tables - {"sqlite_sequence"} or not create:
        raise EventLogError(f"{path} is an SQLite database but not a failover event log")
    # Before the first table: the pages an archive frees can then be given back to the file
    # system a slice at a time (``PRAGMA incremental_vacuum``), without a whole-file VACUUM.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    with write_transaction(conn):
        if not db.table("events").exists():
            db.table("meta").create({"key": str, "value": str}, pk="key")
            db.table("meta").insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})
            # Tells this log from another one later created at the same path (see ``resets``).
            db.table("meta").insert({"key": "log_id", "value": secrets.token_hex(8)})
            db.table("events").create(
                {
                    "seq": int,
                    "type": str,
                    "at": int,  # microseconds since the Unix epoch, UTC (row format 2)
                    "call_id": str,
                    "model_id": str,
                    "writer": int,  # writers.id (row format 2)
                    "body": str,
                },
                pk="seq",
                not_null={"type", "at", "writer", "body"},
            )
            for column in INDEXED:
                db.table("events").create_index([column], index_name=f"events_{column}")
            conn.execute(TYPE_INDEX)
            conn.execute(_SNAPSHOTS)
            conn.execute(SNAPSHOTS_CUT_INDEX)
            conn.execute(_WRITERS)
            conn.execute(_VIEW)
    return schema_version(path, conn.execute(_VERSION).fetchone()[0])  # created meanwhile


@contextlib.contextmanager
def write_transaction(
    conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """``begin``, the block, ``COMMIT``; ``ROLLBACK`` on any error, which is the one raised
    (a failed ``begin`` leaves nothing to roll back)."""
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    """Insert ``rows``, many per statement.

    ``executemany`` runs one statement step per row, and the sqlite3 module lets go of the GIL
    around each step: with the event loop busy on the other core, taking it back costs more
    than the insert itself. One multi-row statement per chunk takes the GIL back once.
    """
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        conn.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])


@functools.lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    return _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1)


def _rows(
    batch: list[Prepared], first: int, writer: object, *, compact: bool
) -> Iterator[tuple[object, ...]]:
    if compact:
        for seq, (tag, at, call_id, model_id, body) in enumerate(batch, first):
            yield seq, tag, at, call_id, model_id, writer, body.decode()
    else:
        for seq, (tag, at, call_id, model_id, tail) in enumerate(batch, first):
            yield seq, tag, at, call_id, model_id, writer, body_text(seq, tail)


class SQLiteEventStore(GroupCommitStore):
    """An event log in one SQLite file (or in memory, the default).

    ``path``: a file path or ``":memory:"``. ``durability``: ``"buffered"``, ``"process"``
    (default) or ``"power"``. ``writer``: this replica's name, stored with each event (default:
    host name, process id and a random suffix). ``create=False`` opens an existing log only (for
    readers such as the CLI) and creates no file. ``lock_timeout``: seconds a write waits for
    another connection's lock before it counts as failed (and is retried). ``close_timeout``:
    seconds ``close`` keeps retrying a failing write before it gives the events up (counted in
    ``dropped``). Counters and the other options: see ``GroupCommitStore``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        *,
        durability: Durability | str = "process",
        writer: str | None = None,
        create: bool = True,
        max_buffer: int = 1_000_000,
        batch_size: int = 2_000,
        strict: bool = False,
        lock_timeout: float = 1.0,
        close_timeout: float = 5.0,
        snapshot_every: int | None = SNAPSHOT_EVERY,
    ) -> None:
        super().__init__(
            durability=durability,
            writer=writer,
            max_buffer=max_buffer,
            batch_size=batch_size,
            strict=strict,
            lock_timeout=lock_timeout,
            close_timeout=close_timeout,
            snapshot_every=None if os.fspath(path) == MEMORY else snapshot_every,
        )
        self.path = os.fspath(path)
        # An in-memory log cannot outlive the process: waiting for its commits buys nothing
        # (a strict store still waits, to raise while its log cannot be written).
        self._waits = self._waits and (self.path != MEMORY or strict)
        # ``process`` mode on a file makes its callers' events durable with one write(2) to a
        # journal file and lets the writer move them into the log (see ``_journal``): a WAL
        # commit on the caller's thread cost six times a buffered call. A strict store does
        # not: its callers wait for the log's own commit, to raise while it cannot be written.
        # Without ``fcntl`` (Windows), or strict, a sequential caller commits its own events on
        # its own thread (a WAL commit without fsync takes tens of microseconds; two thread
        # hand-offs took 100).
        self._inline = self.durability == "process" and self.path != MEMORY
        if self._inline and not strict and journal_available():
            # Its files are created later: by absolute path, whatever the working folder then.
            self._journal = Journal(os.path.abspath(self.path), self.writer)
            self._inline = False
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._conn_closed = False
        self._inode: tuple[int, int] | None = None
        self._identity: object = None
        self._conn = self._open(create=create)
        self._read_log = self._identity
        self._opened = True
        if self.path != MEMORY:
            self._recover_journals()  # before anything else is read or appended
        if self._journal is not None:
            _JOURNALING.add(self)

    event_columns = f"seq, type, at, {_EVENT_JSON}"

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r}, durability={self.durability!r})"

    def _row_text(self, row: Sequence[Any]) -> str:
        _, _, at, text = row
        if type(at) is int and type(text) is str and not text.startswith('{"seq":'):
            return f'{text},"at":"{micros_text(at)}"}}'
        return as_text(text)

    @property
    def location(self) -> str:
        """The file path (or ``":memory:"``)."""
        return self.path

    def _open(self, *, create: bool) -> sqlite3.Connection:
        conn = _connect(self.path, create=create)
        try:
            db = sqlite_utils.Database(conn)
            # First: someone else's database is refused before anything in it changes.
            version = _ensure_schema(db, self.path, create=create)
            self.compact = version >= 2
            self.has_snapshots = "snapshots" in db.table_names()
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
                if self._inline:  # a checkpoint fsyncs: the writer runs them, not the callers
                    conn.execute("PRAGMA wal_autocheckpoint = 0")
            # After the durability's PRAGMAs: the engine's constructor waits for this commit
            # on the event loop, and ``synchronous = FULL`` (SQLite's default) would fsync it.
            self.writer_key = self._writer_id(conn, create=create) if self.compact else self.writer
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            log_id = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self.db = db
        self._inode = self._file_id()
        # A log written before logs had an id is told apart by its file (the open handle keeps
        # its inode from being reused). Nothing is written to it just to read it.
        self._identity = log_id[0] if log_id else (self.path, self._inode)
        return conn

    def _writer_id(self, conn: sqlite3.Connection, *, create: bool) -> int:
        """This writer's id in ``writers`` (registered when the store may write; -1, which no
        row holds, for a reader whose name the log does not know)."""
        if create:
            conn.execute("INSERT OR IGNORE INTO writers (name) VALUES (?)", (self.writer,))
        row = conn.execute("SELECT id FROM writers WHERE name = ?", (self.writer,)).fetchone()
        return int(row[0]) if row else -1

    def _file_id(self) -> tuple[int, int] | None:
        """The device and inode now at ``path``; None when nothing is there (or in memory)."""
        if self.path == MEMORY:
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    # -- writing -------------------------------------------------------------------------

    def _write(self, batch: list[Prepared]) -> None:
        with self._lock:
            self._check_file()
            with write_transaction(self._conn) as conn:
                (last,) = conn.execute(_LAST_SEQ if self.has_snapshots else _MAX_SEQ).fetchone()
                _insert(conn, list(_rows(batch, last + 1, self.writer_key, compact=self.compact)))
                if self._journal is not None:  # in the same transaction: no record moved twice
                    conn.execute(_JOURNAL_MOVED, (self._journal.key, str(self._moving)))

    # -- journals ------------------------------------------------------------------------

    def _recover_journals(self) -> None:
        """Add to the log the events left in the journals of processes that ended before
        their writers moved them (see ``_journal``), then delete those journals. A journal
        whose events cannot be added now (the log is locked, read-only) is kept for the next
        open; it never stops this one."""
        found = dead_journals(self.path)
        if found:  # after what the live stores of this process journaled: their events came first
            self._settle_all()
        for dead in found:
            try:
                added = self._fold_journal(dead)
            except (sqlite3.Error, EventLogError) as exc:
                self.errors += 1
                self.last_error = f"journal of writer {dead.writer}: {type(exc).__name__}: {exc}"
                logger.error(
                    "event log {}: cannot add the events left in the journal of writer {} "
                    "({}); the journal is kept for the next open",
                    self.path,
                    dead.writer,
                    exc,
                )
                dead.release(delete=False)
                continue
            try:
                dead.release(delete=True)
            except OSError as exc:  # its events are in; a later open finds them moved
                self.errors += 1
                self.last_error = f"journal of writer {dead.writer}: {type(exc).__name__}: {exc}"
                logger.error(
                    "event log {}: added the events left in the journal of writer {} but "
                    "cannot delete it ({}); the next open finds them in the log already",
                    self.path,
                    dead.writer,
                    exc,
                )
                continue  # its meta row stays: it says how far the journal is in
            self._forget_journal(dead.key)
            if added or dead.damaged:
                logger.warning(
                    "event log {}: added {} event(s) left in the journal of writer {}, whose "
                    "process ended before they were moved into the log{}",
                    self.path,
                    added,
                    dead.writer,
                    f" ({dead.damaged} damaged record(s) skipped)" if dead.damaged else "",
                )

    def _fold_journal(self, dead: DeadJournal) -> int:
        """One transaction: the journal's records that the log does not have yet (after the
        ticket its ``meta`` row names), in ticket order, after the log's last event."""
        with self._lock, write_transaction(self._conn) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (dead.key,)).fetchone()
            moved = int(row[0]) if row else 0
            tickets = sorted(ticket for ticket in dead.records if ticket > moved)
            batch: list[Prepared] = []
            for ticket in tickets:
                try:
                    event = decode(dead.records[ticket])
                    batch.append(compact(event) if self.compact else prepare(event))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    dead.damaged += 1
            if batch:
                writer = self._writer_ids_in(conn, dead.writer)
                (last,) = conn.execute(_LAST_SEQ if self.has_snapshots else _MAX_SEQ).fetchone()
                _insert(conn, list(_rows(batch, last + 1, writer, compact=self.compact)))
            if tickets:
                conn.execute(_JOURNAL_MOVED, (dead.key, str(tickets[-1])))
        return len(batch)

    def _writer_ids_in(self, conn: sqlite3.Connection, name: str) -> object:
        """What the ``writer`` column holds for ``name``, registered as needed (inside the
        caller's transaction)."""
        if not self.compact:
            return name
        conn.execute("INSERT OR IGNORE INTO writers (name) VALUES (?)", (name,))
        return conn.execute("SELECT id FROM writers WHERE name = ?", (name,)).fetchone()[0]

    def _forget_journal(self, key: str) -> None:
        try:
            self.transaction([("DELETE FROM meta WHERE key = ?", (key,))])
        except EventLogError as exc:  # a stale row is harmless: its journal is gone
            logger.warning("event log {}: {}", self.path, exc)

    def _settle_all(self) -> None:
        """Wait until the events journaled by this store, and by the other journaling stores of
        this process on the same file, are in the log (at once when none is pending)."""
        self._settle()
        if self.path == MEMORY:
            return
        for peer in list(_JOURNALING):
            pending = peer._committed < peer._journaled
            if pending and peer is not self and peer._inode == self._inode:
                peer._settle()

    @property
    def journal_files(self) -> list[str]:
        """This store's journal files now (none without a journal, or before its first
        event, or once closed)."""
        return [] if self._journal is None else self._journal.paths

    def _write_inline(self, batch: list[Prepared]) -> bool:
        """``_write`` on the caller's thread, or False at once: the connection is busy, another
        connection holds the write lock (no waiting for it), the file is not the one we opened,
        or the write fails (the writer thread then does it, with its retries)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._conn_closed or self._file_id() != self._inode:
                return False
            conn = self._conn
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                with write_transaction(conn):
                    (last,) = conn.execute(_LAST_SEQ if self.has_snapshots else _MAX_SEQ).fetchone()
                    _insert(
                        conn, list(_rows(batch, last + 1, self.writer_key, compact=self.compact))
                    )
            except sqlite3.Error:
                return False
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            return True
        finally:
            self._lock.release()

    def _checkpoint(self) -> None:
        with self._lock:
            if not self._conn_closed:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def write_events(self, written: Sequence[tuple[Event, str]]) -> None:
        """Store ``written`` (events with their seqs, each with its writer's name) as they are,
        in one transaction, in this log's row format: for copying events from another log
        (an archive). Not through the queue: the seqs are the events' own."""
        ids = self._writer_ids({name for _, name in written})
        rows: list[object] = []
        for event, name in written:
            tag, at, call_id, model_id, body = self._row(event)
            rows.extend((event.seq, tag, at, call_id, model_id, ids[name], body))
        per = _CHUNK * 7
        self.transaction(
            [
                (_insert_sql(len(rows[start : start + per]) // 7), rows[start : start + per])
                for start in range(0, len(rows), per)
            ]
        )

    def _row(self, event: Event) -> tuple[str, object, str | None, str | None, str]:
        """Type, at, call_id, model_id and body of ``event``'s row in this log's format."""
        if self.compact:
            tag, at, call_id, model_id, body = compact(event)
            return tag, at, call_id, model_id, body.decode()
        tag, at, call_id, model_id, tail = prepare(event)
        return tag, at, call_id, model_id, body_text(event.seq, tail)

    def _writer_ids(self, names: set[str]) -> dict[str, object]:
        """What the ``writer`` column holds for each of ``names`` (registered as needed)."""
        if not self.compact:
            return {name: name for name in names}
        register = "INSERT OR IGNORE INTO writers (name) VALUES (?)"
        self.transaction([(register, (name,)) for name in sorted(names)])
        return {str(name): key for name, key in self.query("SELECT name, id FROM writers")}

    def _writer_names(self) -> dict[object, str]:
        if not self.compact:
            return {}
        return {key: str(name) for key, name in self.query("SELECT id, name FROM writers")}

    def _check_file(self) -> None:
        """Start a new log file if ours was deleted or replaced; the caller holds ``_lock``.

        One ``stat`` per batch. SQLite itself would go on writing into the open, deleted
        inode, where every event is lost once the process ends.
        """
        if self.path == MEMORY or (not self._conn_closed and self._file_id() == self._inode):
            return
        if not self._conn_closed:
            self._report_lost_file()
            # Empty the old file's WAL (through our own handle on it): a WAL left at the path
            # would otherwise be replayed into the new file, with the old file's pages.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn_closed = True
        self._conn = self._open(create=True)
        self._conn_closed = False

    def _report_lost_file(self) -> None:
        # Moved (archived) or deleted: from here the two look alike.
        what = "moved or deleted" if self._file_id() is None else "replaced or moved"
        with contextlib.suppress(sqlite3.Error):
            (last,) = self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            what += f"; its {last} event(s) are no longer at that path"
        self.errors += 1
        self.last_error = f"the log file was {what}"
        logger.error(
            "event log {} was {} while this process had it open; writing to a new log file "
            "at that path from now on (it numbers its events from 1 again)",
            self.path,
            what,
        )

    # -- reading -------------------------------------------------------------------------

    def _reopen_for_reading(self) -> None:
        """After ``close`` a file log stays readable through a fresh connection."""
        if self._conn_closed:
            self._conn = self._open(create=False)
            self._conn_closed = False

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SQL query on the log (tables ``events`` and ``meta``).

        For readers that need an indexed look-up (columns ``seq``, ``type``, ``at``,
        ``call_id``, ``model_id``, ``writer``, ``body``). Works after ``close`` on a file log;
        an SQLite error becomes ``EventLogError``. Does not wait for queued events, but for
        those journaled (``process`` mode): an event ``wait_committed`` returned for is in
        the answer.
        """
        self._settle_all()  # what callers in this process saw committed is in the answer
        try:
            with self._lock:
                self._reopen_for_reading()
                rows: list[tuple[Any, ...]] = self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc
        return rows

    def transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run write ``statements`` in one ``BEGIN IMMEDIATE`` transaction (snapshots,
        archives); an SQLite error becomes ``EventLogError`` and nothing of it is stored."""
        try:
            with self._lock:
                self._reopen_for_reading()
                with write_transaction(self._conn) as conn:
                    for sql, params in statements:
                        conn.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot write event log {self.path}: {exc}") from exc

    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor.

        Rows that do not decode are skipped and counted (see ``decode_others``). When another
        log file is now at the path, it is read from its start (counted in ``resets``).
        """
        after = self._cursor_for(after)
        self._settle_all()
        try:
            with self._lock:
                self._reopen_for_reading()
                rows, cursor = self._others(after)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc
        events = self.decode_others(rows)
        return events, max(cursor, after)

    def _others(self, after: int) -> tuple[list[tuple[Any, ...]], int]:
        # One read transaction: the cursor and the rows come from the same snapshot.
        conn = self._conn
        conn.execute("BEGIN")
        try:
            (cursor,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            rows = conn.execute(
                f"SELECT {self.event_columns} FROM events WHERE seq > ? AND seq <= ? "  # noqa: S608 - fixed columns
                "AND writer != ? "
                "ORDER BY seq",
                (after, cursor, self.writer_key),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return rows, int(cursor)

    def _log_identity(self) -> object:
        """The log now at the path: another file put there is opened (and reported)."""
        with self._lock:
            found = self._file_id()
            if not self._conn_closed and found is not None and found != self._inode:
                self._check_file()
            return self._identity

    def json_field(self, key: str) -> str:
        """``json_extract(body, '$.key')``."""
        if not key.isidentifier():
            raise ValueError(f"not a field name: {key!r}")
        return f"json_extract(body, '$.{key}')"

    def unindexed(self, column: str) -> str:
        """``+column``: SQLite's way to keep an index from driving the query."""
        return f"+{column}"

    # -- closing -------------------------------------------------------------------------

    def _close_connection(self) -> None:
        _JOURNALING.discard(self)
        # An in-memory log would vanish with its only connection: keep it readable.
        if self.path != MEMORY:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if not self._conn_closed:
                self._conn.close()
                self._conn_closed = True
