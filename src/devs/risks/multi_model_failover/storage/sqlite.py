"""The SQLite event store: one table of JSON events, written by a group-committing thread.

``append`` only puts the event on a queue (no I/O, no thread hop). A writer thread drains the
queue in batches: one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch, numbering the events with a
global ``seq`` inside the transaction, so several processes can share one file (WAL).

Durability modes:

- ``buffered``: callers never wait; a process crash may lose the events of the last moments.
- ``process`` (default): ``wait_committed`` returns once the event is committed; with WAL and
  ``synchronous=NORMAL`` a committed event survives a crash of the process.
- ``power``: as ``process`` with ``synchronous=FULL``: every commit is fsynced.

A write that fails (disk full, file locked, read-only) never fails the model call: the batch
stays queued and is retried with backoff, ``errors`` counts the failures and a loud log line
says so. The queue is bounded (``max_buffer``); what does not fit is counted in ``dropped``
and logged, never lost silently. ``strict=True`` raises ``EventLogError`` instead.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import anyio
import msgspec
import sqlite_utils
from loguru import logger

from ..core.errors import EventLogError, SchemaVersionError
from ..core.events import SCHEMA_VERSION, Event, decode, encode
from ..core.protocols import DURABILITIES, Durability

MEMORY: Final = ":memory:"
_PAGE: Final = 5_000
_SYNCHRONOUS: Final = {"buffered": "NORMAL", "process": "NORMAL", "power": "FULL"}


def _validate_durability(durability: str) -> Durability:
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, got {durability!r}")
    return durability  # type: ignore[return-value]


def _create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (the log may name models and callers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _connect(path: str, *, create: bool) -> sqlite3.Connection:
    if path == MEMORY:
        return sqlite3.connect(MEMORY, check_same_thread=False, isolation_level=None)
    file = Path(path)
    if not file.exists():
        if not create:
            raise EventLogError(f"no event log at {path}: the file does not exist")
        _create_private_file(file)
    elif file.is_dir():
        raise EventLogError(f"{path} is a directory, not an event log")
    try:
        conn = sqlite3.connect(file, check_same_thread=False, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise EventLogError(f"{path} is not an SQLite database ({exc})") from exc
    return conn


def _ensure_schema(db: sqlite_utils.Database, path: str, *, create: bool) -> None:
    """Create the tables on a new log; refuse a file that is not ours or is newer."""
    conn = db.conn
    tables = set(db.table_names())
    if "events" in tables and "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} was written with event-log schema version {version}; this version "
                f"reads up to {SCHEMA_VERSION}: upgrade devs-risks-multi-model-failover"
            )
        return
    if tables - {"sqlite_sequence"} or not create:
        raise EventLogError(f"{path} is an SQLite database but not a failover event log")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not db.table("events").exists():
            db.table("meta").create({"key": str, "value": str}, pk="key")
            db.table("meta").insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})
            db.table("events").create(
                {
                    "seq": int,
                    "type": str,
                    "at": str,
                    "call_id": str,
                    "model_id": str,
                    "writer": str,
                    "body": str,
                },
                pk="seq",
                not_null={"type", "at", "writer", "body"},
            )
            for column in ("type", "call_id", "model_id", "at"):
                db.table("events").create_index([column], index_name=f"events_{column}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _row(event: Event, seq: int, writer: str) -> tuple[object, ...]:
    body = encode(event)
    # Splice the number in rather than copying the frozen struct: the body stays one encode.
    body = b'{"seq":%d,%s' % (seq, body[1:])
    return (
        seq,
        event.type,
        event.at.isoformat(timespec="microseconds"),
        getattr(event, "call_id", None),
        getattr(event, "model_id", None),
        writer,
        body.decode(),
    )


class SQLiteEventStore:
    """An event log in one SQLite file (or in memory, the default).

    ``path``: a file path or ``":memory:"``. ``durability``: ``"buffered"``, ``"process"``
    (default) or ``"power"``. ``create=False`` opens an existing log only (for readers such as
    the CLI) and creates no file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        *,
        durability: Durability | str = "process",
        create: bool = True,
        max_buffer: int = 1_000_000,
        batch_size: int = 2_000,
        strict: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.durability: Durability = _validate_durability(durability)
        self.writer = uuid.uuid4().hex[:12]
        self.strict = strict
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.errors = 0
        self.dropped = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._conn = _connect(self.path, create=create)
        self._lock = threading.Lock()
        try:
            self._configure()
            self.db = sqlite_utils.Database(self._conn)
            _ensure_schema(self.db, self.path, create=create)
        except sqlite3.Error as exc:
            self._conn.close()
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        except EventLogError:
            self._conn.close()
            raise
        self._queue: deque[Event] = deque()
        self._appended = 0
        self._committed = 0
        self._failing = False
        self._closing = False
        self._closed = False
        self._conn_closed = False
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._closing_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._leader: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r}, durability={self.durability!r})"

    def _configure(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 5000")
        if self.path != MEMORY:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")

    # -- writing -------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Queue ``event`` for the writer; returns its ticket. Never blocks on I/O."""
        if self._closing:
            raise EventLogError(f"event log {self.path} is closed")
        if len(self._queue) >= self.max_buffer:
            self._overflow(event)
            return self._appended
        self._queue.append(event)
        self._appended += 1
        if self._thread is None:
            self._start_writer()
        if not self._wake.is_set():
            self._wake.set()
        return self._appended

    def _overflow(self, event: Event) -> None:
        self.dropped += 1
        message = (
            f"event log buffer full ({self.max_buffer} events waiting for {self.path}); "
            f"dropped a {event.type} event ({self.dropped} dropped so far)"
        )
        if self.strict:
            raise EventLogError(message)
        logger.error(message)

    def _start_writer(self) -> None:
        self._thread = threading.Thread(
            target=self._writer_loop, name=f"failover-log-{self.writer}", daemon=True
        )
        self._thread.start()

    def _writer_loop(self) -> None:
        retry_wait = 0.05
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                try:
                    self._write(batch)
                except sqlite3.Error as exc:
                    self._queue.extendleft(reversed(batch))
                    self._write_failed(exc)
                    if self._closing and retry_wait > 1:
                        return  # give up at close after repeated failures; counted in errors
                    # Wait before retrying; a close cuts the wait short.
                    self._closing_event.wait(retry_wait)
                    retry_wait = min(retry_wait * 2, 5.0)
                    continue
                retry_wait = 0.05
                self._committed_more(len(batch))
            if self._closing and not self._queue:
                return

    def _write(self, batch: list[Event]) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                rows = [_row(event, last + i, self.writer) for i, event in enumerate(batch, 1)]
                conn.executemany(
                    "INSERT INTO events (seq, type, at, call_id, model_id, writer, body) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _write_failed(self, exc: sqlite3.Error) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "event log {} write failed ({}); {} event(s) kept in memory and retried",
            self.path,
            self.last_error,
            len(self._queue),
        )
        with self._progress:
            self._failing = True
            self._progress.notify_all()

    def _committed_more(self, count: int) -> None:
        with self._progress:
            if self._failing:
                logger.warning("event log {} writable again", self.path)
            self._failing = False
            self._committed += count
            self._progress.notify_all()

    def _wait_progress(self, seen: int, timeout: float) -> None:
        with self._progress:
            self._progress.wait_for(
                lambda: self._committed > seen or self._failing or self._closed, timeout
            )

    async def wait_committed(self, ticket: int) -> None:
        """Wait until ``ticket`` is committed (``process``/``power``); at once if ``buffered``.

        While the log cannot be written it returns without waiting (or raises
        ``EventLogError`` with ``strict=True``): a failing log never holds up model answers.
        """
        if self.durability == "buffered":
            return
        while self._committed < ticket:
            if self._failing or self._closed:
                if self.strict:
                    raise EventLogError(f"event log {self.path} not written: {self.last_error}")
                return
            leader = self._leader
            if leader is not None:
                await leader.wait()
                continue
            # One waiter hops to a thread and waits for the writer; the others wait for it.
            self._leader = event = anyio.Event()
            try:
                await anyio.to_thread.run_sync(
                    self._wait_progress, self._committed, 1.0, abandon_on_cancel=True
                )
            finally:
                self._leader = None
                event.set()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until every appended event is committed; False on timeout or failure."""
        if self._thread is None:
            return True
        target = self._appended
        with self._progress:
            return (
                self._progress.wait_for(
                    lambda: self._committed >= target or self._failing or self._closed, timeout
                )
                and self._committed >= target
            )

    # -- reading -------------------------------------------------------------------------

    def _decode(self, seq: int, body: str, *, lenient: bool) -> Event | None:
        try:
            return decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if lenient:
                self.skipped += 1
                return None
            raise EventLogError(
                f"event log {self.path}: row seq={seq} is not a valid event: {exc}"
            ) from exc

    def _reopen_for_reading(self) -> None:
        """After ``close`` a file log stays readable through a fresh connection."""
        if self._closed and self._conn_closed and self.path != MEMORY:
            self._conn = _connect(self.path, create=False)
            self._conn_closed = False

    def _page(self, sql: str, params: tuple[object, ...]) -> list[tuple[int, str]]:
        try:
            with self._lock:
                self._reopen_for_reading()
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc

    def read(
        self,
        *,
        after: int = 0,
        where: str = "",
        params: tuple[object, ...] = (),
        lenient: bool = False,
    ) -> Iterator[Event]:
        """Stored events with ``seq > after``, oldest first, streamed page by page.

        This store's own appends are flushed first. ``where`` is an extra SQL condition on
        the ``events`` columns with ``?`` placeholders filled from ``params``. A row that does
        not decode raises ``EventLogError`` naming its seq, or is skipped and counted in
        ``skipped`` with ``lenient=True``.
        """
        self.flush()
        condition = f"seq > ? AND ({where})" if where else "seq > ?"
        sql = f"SELECT seq, body FROM events WHERE {condition} ORDER BY seq LIMIT {_PAGE}"  # noqa: S608 - fixed columns; values are parameters
        last = after
        while True:
            rows = self._page(sql, (last, *params))
            for seq, body in rows:
                event = self._decode(seq, body, lenient=lenient)
                if event is not None:
                    yield event
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor."""
        with self._lock:
            self._reopen_for_reading()
            conn = self._conn
            conn.execute("BEGIN")
            try:
                (cursor,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                rows = conn.execute(
                    "SELECT seq, body FROM events WHERE seq > ? AND seq <= ? AND writer != ? "
                    "ORDER BY seq",
                    (after, cursor, self.writer),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        events = [e for seq, body in rows if (e := self._decode(seq, body, lenient=True))]
        return events, max(cursor, after)

    def last_seq(self) -> int:
        """The highest stored ``seq``; 0 for an empty log."""
        rows = self._page("SELECT coalesce(max(seq), 0), '' FROM events", ())
        return int(rows[0][0])

    def count(self) -> int:
        """How many events are stored."""
        rows = self._page("SELECT count(*), '' FROM events", ())
        return int(rows[0][0])

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is queued, stop the writer and close the file. Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._closing_event.set()
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=30)
        if self._queue:
            logger.error(
                "event log {} closed with {} event(s) unwritten: {}",
                self.path,
                len(self._queue),
                self.last_error,
            )
        with self._progress:
            self._closed = True
            self._progress.notify_all()
        # An in-memory log would vanish with its only connection: keep it readable.
        if self.path != MEMORY:
            with self._lock:
                self._conn.close()
                self._conn_closed = True

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> SQLiteEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
