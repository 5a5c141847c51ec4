"""The SQLite event store: one table of JSON events, written by a group-committing thread.

``append`` only puts the event on a queue (no I/O, no thread hop). A writer thread drains the
queue in batches: one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch, numbering the events with a
global, gap-free ``seq`` inside the transaction, so several processes can share one file (WAL).

Durability modes:

- ``buffered``: callers never wait; a process crash may lose the events of the last moments.
- ``process`` (default): ``wait_committed`` returns once the event is committed; with WAL and
  ``synchronous=NORMAL`` a committed event survives a crash of the process.
- ``power``: as ``process`` with ``synchronous=FULL``: every commit is fsynced.

A write that fails (disk full, file locked longer than ``lock_timeout``, read-only) never fails
the model call: the batch is kept and retried with backoff, ``errors`` counts the failures and a
loud log line says so; meanwhile ``wait_committed`` returns at once. The queue is bounded
(``max_buffer``); what does not fit is counted in ``dropped`` and logged, never lost silently.
``strict=True`` raises ``EventLogError`` instead (from ``append`` on overflow, from
``wait_committed`` while the log cannot be written).

Waiting costs no thread: each event loop (asyncio or trio) registers its waiting tasks, and the
writer wakes a loop with one thread-safe call per commit, never blocking on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
import sqlite_utils
from loguru import logger

from ..core.errors import EventLogError, SchemaVersionError
from ..core.events import EVENT_TYPES, SCHEMA_VERSION, Event, decode, encode
from ..core.protocols import DURABILITIES, Durability

MEMORY: Final = ":memory:"
_PAGE: Final = 5_000
_SYNCHRONOUS: Final = {"buffered": "NORMAL", "process": "NORMAL", "power": "FULL"}
_OPEN_TIMEOUT: Final = 5.0
_FIRST_RETRY: Final = 0.05
_LAST_RETRY: Final = 5.0
_INDEXED: Final = ("type", "call_id", "model_id", "at")
_INSERT: Final = (
    "INSERT INTO events (seq, type, at, call_id, model_id, writer, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# What a row needs from each event class: its tag, and whether it has a call_id / model_id.
_SHAPES: Final = {
    cls: (tag, "call_id" in cls.__struct_fields__, "model_id" in cls.__struct_fields__)
    for tag, cls in EVENT_TYPES.items()
}
_datetime_encoder = msgspec.json.Encoder(enc_hook=lambda obj: obj.isoformat())

# An event encoded and ready to insert, less its seq: type, at, call_id, model_id, body tail.
_Prepared = tuple[str, str, str | None, str | None, bytes]
_Schedule = Callable[[Callable[[], object]], object]


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
        conn = sqlite3.connect(
            file, check_same_thread=False, isolation_level=None, timeout=_OPEN_TIMEOUT
        )
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
            for column in _INDEXED:
                db.table("events").create_index([column], index_name=f"events_{column}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _at_text(at: datetime) -> str:
    """``at.isoformat(timespec="microseconds")``, five times faster for UTC times."""
    if type(at) is datetime and at.tzinfo is UTC:  # not a subclass (e.g. freezegun's)
        # msgspec writes RFC 3339 ("...T00:00:00.123456Z", no fraction when it is zero).
        raw = _datetime_encoder.encode(at)
        if len(raw) == 29:
            return raw[1:-2].decode() + "+00:00"
        if len(raw) == 22:
            return raw[1:-2].decode() + ".000000+00:00"
    return at.isoformat(timespec="microseconds")


def _prepare(event: Event) -> _Prepared:
    """Everything a row needs but its seq, computed outside the write transaction."""
    tag, has_call_id, has_model_id = _SHAPES[type(event)]
    return (
        tag,
        _at_text(event.at),
        getattr(event, "call_id", None) if has_call_id else None,
        getattr(event, "model_id", None) if has_model_id else None,
        encode(event)[1:],
    )


def _rows(batch: list[_Prepared], first: int, writer: str) -> Iterator[tuple[object, ...]]:
    for seq, (tag, at, call_id, model_id, tail) in enumerate(batch, first):
        # Splice the number in rather than copying the frozen struct: the body stays one encode.
        yield seq, tag, at, call_id, model_id, writer, (b'{"seq":%d,%s' % (seq, tail)).decode()


class _Waiter:
    """One task in ``wait_committed``, woken when ``ticket`` is committed."""

    __slots__ = ("event", "loop", "ticket")

    def __init__(self, ticket: int, loop: _LoopWaiters) -> None:
        self.ticket = ticket
        self.loop = loop
        self.event = anyio.Event()


class _LoopWaiters:
    """The waiting tasks of one event loop, and how to run a callback on that loop."""

    __slots__ = ("key", "schedule", "scheduled", "waiters")

    def __init__(self, key: object, schedule: _Schedule) -> None:
        self.key = key
        self.schedule = schedule
        self.scheduled = False
        self.waiters: set[_Waiter] = set()


def _running_loop() -> tuple[object, _Schedule]:
    """The running event loop and its thread-safe ``call soon``."""
    if "trio" in sys.modules:  # trio (and sniffio, which trio needs) can only run if imported
        import sniffio  # noqa: PLC0415
        import trio  # noqa: PLC0415

        if sniffio.current_async_library() == "trio":
            token = trio.lowlevel.current_trio_token()
            return token, token.run_sync_soon
    loop = asyncio.get_running_loop()
    return loop, loop.call_soon_threadsafe


class SQLiteEventStore:
    """An event log in one SQLite file (or in memory, the default).

    ``path``: a file path or ``":memory:"``. ``durability``: ``"buffered"``, ``"process"``
    (default) or ``"power"``. ``create=False`` opens an existing log only (for readers such as
    the CLI) and creates no file. ``lock_timeout``: seconds a write waits for another
    connection's lock before it counts as failed (and is retried). ``close_timeout``: seconds
    ``close`` keeps retrying a failing write before it gives the events up (counted in
    ``dropped``).
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
        lock_timeout: float = 1.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.durability: Durability = _validate_durability(durability)
        self.writer = uuid.uuid4().hex[:12]
        self.strict = strict
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.lock_timeout = lock_timeout
        self.close_timeout = close_timeout
        self.errors = 0
        self.dropped = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._conn = self._open(create=create)
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._queue: deque[Event] = deque()
        self._appended = 0
        # Tickets up to here are done with: committed, or given up (counted in ``dropped``).
        self._committed = 0
        self._failing = False
        self._closing = False
        self._closed = False
        self._conn_closed = False
        self._progress = threading.Condition()  # guards the state above and the waiters
        self._loops: dict[object, _LoopWaiters] = {}
        self._wake = threading.Event()
        self._retry_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._append_lock = threading.Lock()
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteEventStore({self.path!r}, durability={self.durability!r})"

    def _open(self, *, create: bool) -> sqlite3.Connection:
        conn = _connect(self.path, create=create)
        try:
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
            self.db = sqlite_utils.Database(conn)
            _ensure_schema(self.db, self.path, create=create)
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
        except sqlite3.Error as exc:
            conn.close()
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        except EventLogError:
            conn.close()
            raise
        return conn

    # -- writing -------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Queue ``event`` for the writer; returns its ticket. Never blocks on I/O."""
        if self._closing:
            raise EventLogError(f"event log {self.path} is closed")
        with self._append_lock:  # a ticket is the event's place in the queue, even across threads
            if len(self._queue) >= self.max_buffer:
                self._overflow(event)
                return self._appended
            self._queue.append(event)
            self._appended += 1
            ticket = self._appended
            if self._thread is None:
                self._start_writer()
        if not self._wake.is_set():
            self._wake.set()
        return ticket

    def _count_dropped(self, count: int) -> None:
        with self._progress:  # the writer thread and the callers both count
            self.dropped += count

    def _overflow(self, event: Event) -> None:
        self._count_dropped(1)
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
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                events = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                if not self._store(self._prepare_batch(events)):
                    self._give_up(len(events))
                    return
                self._done(len(events))
            if self._closing and not self._queue:
                return

    def _prepare_batch(self, events: list[Event]) -> list[_Prepared]:
        batch: list[_Prepared] = []
        for event in events:
            try:
                batch.append(_prepare(event))
            except Exception as exc:  # noqa: BLE001 - one unencodable event must not stop the log
                self._count_dropped(1)
                self.errors += 1
                logger.error(
                    "event log {}: dropped an event that cannot be stored ({}: {})",
                    self.path,
                    type(exc).__name__,
                    exc,
                )
        return batch

    def _store(self, batch: list[_Prepared]) -> bool:
        """Commit ``batch``, retrying with backoff; False when ``close`` gave up on it."""
        retry_wait = _FIRST_RETRY
        gave_up_at: float | None = None
        while True:
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the events for a retry
                self._write_failed(exc, len(batch))
            else:
                return True
            if self._closing:
                now = time.monotonic()
                if gave_up_at is None:
                    gave_up_at = now + self.close_timeout
                if now >= gave_up_at:
                    return False
            # ``close`` cuts the current wait short, once, to try a last time at once.
            if self._retry_now.wait(retry_wait):
                self._retry_now.clear()
            retry_wait = min(retry_wait * 2, _LAST_RETRY)

    def _write(self, batch: list[_Prepared]) -> None:
        if not batch:
            return
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                conn.executemany(_INSERT, _rows(batch, last + 1, self.writer))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _write_failed(self, exc: Exception, batch: int) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "event log {} write failed ({}); {} event(s) kept in memory and retried",
            self.path,
            self.last_error,
            batch + len(self._queue),
        )
        with self._progress:
            self._failing = True
            self._progress.notify_all()
            due = self._due_loops()
        self._wake_loops(due)

    def _done(self, count: int) -> None:
        with self._progress:
            recovered, self._failing = self._failing, False
            self._committed += count
            self._progress.notify_all()
            due = self._due_loops()
        self._wake_loops(due)
        if recovered:
            logger.warning("event log {} writable again", self.path)

    def _give_up(self, in_flight: int) -> None:
        lost = in_flight + len(self._queue)
        self._queue.clear()
        self._count_dropped(lost)
        logger.error(
            "event log {} closed with {} event(s) unwritten: {}", self.path, lost, self.last_error
        )

    # -- waiting -------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many tasks are waiting in ``wait_committed`` (for diagnostics)."""
        with self._progress:
            return sum(len(loop.waiters) for loop in self._loops.values())

    async def wait_committed(self, ticket: int) -> None:
        """Wait until ``ticket`` is committed (``process``/``power``); at once if ``buffered``.

        While the log cannot be written, or once it is closed with the event unwritten, it
        returns without waiting (or raises ``EventLogError`` with ``strict=True``): a failing
        log never holds up model answers.
        """
        if self.durability == "buffered":
            return
        while self._committed < ticket:
            waiter = self._register(ticket)
            if waiter is None:
                return
            try:
                await waiter.event.wait()
            finally:
                self._unregister(waiter)

    def _register(self, ticket: int) -> _Waiter | None:
        """Enlist the calling task; None when it need not (or must not) wait."""
        key, schedule = _running_loop()
        with self._progress:
            if self._committed >= ticket:
                return None
            if self._failing or self._closed:
                if self.strict:
                    raise EventLogError(f"event log {self.path} not written: {self.last_error}")
                return None
            loop = self._loops.get(key)
            if loop is None:
                loop = self._loops[key] = _LoopWaiters(key, schedule)
            waiter = _Waiter(ticket, loop)
            loop.waiters.add(waiter)
            return waiter

    def _unregister(self, waiter: _Waiter) -> None:
        with self._progress:
            self._forget(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        loop = waiter.loop
        loop.waiters.discard(waiter)
        if not loop.waiters and self._loops.get(loop.key) is loop:
            del self._loops[loop.key]

    def _due_loops(self) -> list[_LoopWaiters]:
        """The loops to wake after a change of state; the caller holds ``_progress``."""
        due = [loop for loop in self._loops.values() if loop.waiters and not loop.scheduled]
        for loop in due:
            loop.scheduled = True
        return due

    def _wake_loops(self, due: list[_LoopWaiters]) -> None:
        """Ask each loop to wake its waiters (outside ``_progress``: never blocks)."""
        for loop in due:
            try:
                loop.schedule(partial(self._wake_waiters, loop))
            except RuntimeError:  # the loop has ended: its waiters are gone with it
                with self._progress:
                    if self._loops.get(loop.key) is loop:
                        del self._loops[loop.key]

    def _wake_waiters(self, loop: _LoopWaiters) -> None:
        """Runs on the waiters' own loop: wake those whose wait is over."""
        with self._progress:
            loop.scheduled = False
            everyone = self._failing or self._closed
            ready = [w for w in loop.waiters if everyone or w.ticket <= self._committed]
            for waiter in ready:
                self._forget(waiter)
        for waiter in ready:
            waiter.event.set()

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
        if self._conn_closed:
            self._conn = self._open(create=False)
            self._conn_closed = False

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SQL query on the log (tables ``events`` and ``meta``).

        For readers that need an indexed look-up (columns ``seq``, ``type``, ``at``,
        ``call_id``, ``model_id``, ``writer``, ``body``). Works after ``close`` on a file log;
        an SQLite error becomes ``EventLogError``. Does not wait for queued events.
        """
        try:
            with self._lock:
                self._reopen_for_reading()
                rows: list[tuple[Any, ...]] = self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc
        return rows

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
            rows = self.query(sql, (last, *params))
            for seq, body in rows:
                event = self._decode(seq, body, lenient=lenient)
                if event is not None:
                    yield event
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor.

        Rows that do not decode are skipped and counted in ``skipped``.
        """
        try:
            with self._lock:
                self._reopen_for_reading()
                rows, cursor = self._others(after)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {self.path}: {exc}") from exc
        events = [e for seq, body in rows if (e := self._decode(seq, body, lenient=True))]
        return events, max(cursor, after)

    def _others(self, after: int) -> tuple[list[tuple[int, str]], int]:
        # One read transaction: the cursor and the rows come from the same snapshot.
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
        return rows, int(cursor)

    def last_seq(self) -> int:
        """The highest stored ``seq``; 0 for an empty log. Does not wait for queued events."""
        rows = self.query("SELECT coalesce(max(seq), 0) FROM events")
        return int(rows[0][0])

    def count(self) -> int:
        """How many events are stored. Does not wait for queued events."""
        rows = self.query("SELECT count(*) FROM events")
        return int(rows[0][0])

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is queued, stop the writer and close the file. Idempotent.

        A failing log is retried for up to ``close_timeout`` seconds; what is still unwritten
        then is logged and counted in ``dropped``.
        """
        with self._close_lock:
            if not self._closed:
                self._close()

    def _close(self) -> None:
        self._closing = True
        self._retry_now.set()
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=self.close_timeout + self.lock_timeout + 30)
        with self._progress:
            self._closed = True
            self._progress.notify_all()
            due = self._due_loops()
        self._wake_loops(due)
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
