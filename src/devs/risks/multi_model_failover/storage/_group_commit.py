"""What every event store backend shares: a bounded queue, a group-committing writer thread,
tickets, loop-native waiters, retry with backoff, strict mode, and closing.

``append`` only puts the event on a queue (no I/O, no thread hop). A writer thread drains the
queue in batches and hands each batch to the backend's ``_write``, which stores it in one
transaction, numbering the events with a global, gap-free ``seq``. A backend implements only
what touches its database: opening, ``_write``, ``query``, ``read_others``, the SQL dialect
bits readers need (``json_field``, ``unindexed``) and ``_close_connection``.

A write that fails (disk full, locked, server down) never fails the model call: the batch is
kept and retried with backoff, ``errors`` counts the failures and a loud log line says so;
meanwhile ``wait_committed`` returns at once. The queue is bounded (``max_buffer``); what does
not fit is counted in ``dropped`` and logged, never lost silently. ``strict=True`` raises
``EventLogError`` instead (from ``append`` on overflow, from ``wait_committed`` while the log
cannot be written).

Waiting costs no thread: each event loop (asyncio or trio) registers its waiting tasks, and the
writer wakes a loop with one thread-safe call per commit, never blocking on it.

A store must be closed. One that the program lets go of unclosed is closed when it is
collected, with a ``ResourceWarning`` (as for an unclosed file): the writer thread holds only a
weak reference to its store between batches, so it keeps neither the store nor the process
alive.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, Self

import anyio
import anyio.lowlevel
import msgspec
from loguru import logger

from ..core.errors import EventLogError
from ..core.events import EVENT_TYPES, Event, decode, encode
from ..core.protocols import DURABILITIES, Durability
from ._journal import Journal
from .snapshots import Pace, Snapshots

PAGE: Final = 5_000
# The incident queries' indexes: ``call_id`` and ``at`` on every row, ``type`` only on the rows
# of the types an incident looks for by type (state changes, maintenance, failovers, failures).
# The four types that every call writes on its hot path stay out of that partial index: index
# upkeep was half the writer's cost per event. A query that wants the partial index repeats
# ``NOT_HOT`` word for word (that is how SQLite and PostgreSQL match a partial index).
INDEXED: Final = ("call_id", "at")
HOT_TYPES: Final = ("call_started", "attempt_started", "attempt_succeeded", "call_succeeded")
NOT_HOT: Final = f"type NOT IN ({', '.join(repr(t) for t in HOT_TYPES)})"
TYPE_INDEX: Final = f"CREATE INDEX IF NOT EXISTS events_type_rare ON events (type) WHERE {NOT_HOT}"
# A store whose callers commit their own events: how often its writer looks at the queue
# (seconds), after how many empty looks it sleeps until woken, the most events a caller
# commits itself (more go to the writer, so that one commit never stalls the event loop), and
# the events committed between two WAL checkpoints (run by the writer, never by a caller).
_LINGER: Final = 0.05
_IDLE_LOOKS: Final = 20
_INLINE_MOST: Final = 64
_CHECKPOINT_EVERY: Final = 2_000
# A journaling store's ``wait_committed`` yields to the event loop once in this many returns.
_YIELD_EVERY: Final = 32
_FIRST_RETRY: Final = 0.05
_LAST_RETRY: Final = 5.0
_HOST_CHARS: Final = 24

# What a row needs from each event class: its tag, and whether it has a call_id / model_id.
_SHAPES: Final = {
    cls: (tag, "call_id" in cls.__struct_fields__, "model_id" in cls.__struct_fields__)
    for tag, cls in EVENT_TYPES.items()
}
_datetime_encoder = msgspec.json.Encoder(enc_hook=lambda obj: obj.isoformat())


class _Envelope(msgspec.Struct):
    """The fields every stored event has, whatever its type: what tells a newer version's
    event (a sound envelope, an unknown ``type``) from a damaged row."""

    seq: int
    type: str
    at: datetime


_envelope_decoder = msgspec.json.Decoder(_Envelope)

# An event encoded and ready to insert, less its seq: type, at, call_id, model_id, and the JSON
# body. Row format 1 (logs of schema version 1): ``at`` as ISO text, and the body is the
# event's whole JSON after its opening brace (the store splices ``{"seq":N,`` in front).
# Row format 2 (new logs): ``at`` in integer microseconds since the Unix epoch (UTC), and the
# body holds only the fields that have no column of their own (see ``compact``).
Prepared = tuple[str, str | int, str | None, str | None, bytes]
ROW_COLUMNS: Final = "seq, type, at, call_id, model_id, body"
_Schedule = Callable[[Callable[[], object]], object]


def validate_durability(durability: str) -> Durability:
    """``durability`` if it is one of ``DURABILITIES``, else ``ValueError``."""
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, got {durability!r}")
    return durability  # type: ignore[return-value]


def default_writer() -> str:
    """This replica's name on its events: short host name, process id, a random suffix.

    The suffix tells two stores of one process apart (and a reused pid after a restart).
    """
    host = socket.gethostname().split(".")[0][:_HOST_CHARS] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def at_text(at: datetime) -> str:
    """``at.isoformat(timespec="microseconds")``, five times faster for UTC times."""
    if type(at) is datetime and at.tzinfo is UTC:  # not a subclass (e.g. freezegun's)
        # msgspec writes RFC 3339 ("...T00:00:00.123456Z", no fraction when it is zero).
        raw = _datetime_encoder.encode(at)
        if len(raw) == 29:
            return raw[1:-2].decode() + "+00:00"
        if len(raw) == 22:
            return raw[1:-2].decode() + ".000000+00:00"
    return at.isoformat(timespec="microseconds")


def prepare(event: Event, raw: bytes | None = None) -> Prepared:
    """Everything a row needs but its seq, computed outside the write transaction (``raw``:
    ``encode(event)`` when the caller has it already)."""
    tag, has_call_id, has_model_id = _SHAPES[type(event)]
    return (
        tag,
        at_text(utc(event.at)),  # in UTC, so that the column sorts in time order
        getattr(event, "call_id", None) if has_call_id else None,
        getattr(event, "model_id", None) if has_model_id else None,
        (encode(event) if raw is None else raw)[1:],
    )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_HEADS: Final = {cls: b'{"type":"%s",' % tag.encode() for tag, cls in EVENT_TYPES.items()}
_AT_KEY: Final = b'"at":"'
# The text of each second recently turned into ISO form (reads meet the same second often).
_SECONDS: dict[int, str] = {}


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time is taken as UTC (never as the machine's local time)."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at if at.tzinfo is UTC else at.astimezone(UTC)


def at_micros(at: datetime) -> int:
    """``at`` in whole microseconds since the Unix epoch; a naive time is taken as UTC."""
    return (utc(at) - _EPOCH) // _MICROSECOND


def micros_text(micros: int) -> str:
    """The RFC 3339 UTC text of ``micros`` (microseconds since the Unix epoch)."""
    seconds, fraction = divmod(micros, 1_000_000)
    whole = _SECONDS.get(seconds)
    if whole is None:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        t = time.gmtime(seconds)  # not strftime: "%Y" drops the zeros before year 1000
        whole = _SECONDS[seconds] = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
    return f"{whole}.{fraction:06d}Z"


def compact(event: Event, raw: bytes | None = None) -> Prepared:
    """Row format 2: everything a row needs but its seq, the body without what the columns hold
    (``raw``: ``encode(event)`` when the caller has it already).

    msgspec writes the tag first, then ``call_id`` and ``model_id`` (each event class declares
    them first), the other fields, and ``at`` last: the body is what lies between. An event
    that does not look like that is taken apart field by field instead.
    """
    tag, has_call_id, has_model_id = _SHAPES[type(event)]
    call_id = getattr(event, "call_id", None) if has_call_id else None
    model_id = getattr(event, "model_id", None) if has_model_id else None
    if raw is None:
        raw = encode(event)
    start = len(_HEADS[type(event)])
    for value, key in ((call_id, b'"call_id":'), (model_id, b'"model_id":')):
        if value is not None:
            field = key + _encode_text(value) + b","
            if not raw.startswith(field, start):
                return tag, at_micros(event.at), call_id, model_id, _body_by_fields(event)
            start += len(field)
    end = raw.rfind(_AT_KEY)
    if end < start or not raw.endswith(b'"}'):
        return tag, at_micros(event.at), call_id, model_id, _body_by_fields(event)
    return tag, at_micros(event.at), call_id, model_id, b"{" + raw[start:end].rstrip(b",") + b"}"


def _body_by_fields(event: Event) -> bytes:
    fields = msgspec.to_builtins(event, enc_hook=_iso)
    for column in ("type", "seq", "at", "call_id", "model_id"):
        fields.pop(column, None)
    return msgspec.json.encode(fields)


def _iso(obj: object) -> object:
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encode_text = msgspec.json.encode


def event_text(
    seq: int, tag: str, at: object, call_id: str | None, model_id: str | None, body: object
) -> str:
    """An event's whole JSON from its row, in either row format.

    A format-1 body is the whole event already; a format-2 body gets the columns put back.
    A body that is not text (a damaged row) comes back as text that does not decode.
    Every read of the log runs this once a row: it is written for speed.
    """
    body = as_text(body)
    if type(at) is not int or body.startswith('{"seq":'):
        return body
    head = _TEXT_HEADS.get(tag)
    if head is None:  # a type this version does not know, or a damaged one
        head = '{"type":' + _json_string(tag) + ',"seq":'
    text = f'{head}{seq},"at":"{micros_text(at)}"'
    if call_id is not None:
        text += ',"call_id":' + _json_string(call_id)
    if model_id is not None:
        text += ',"model_id":' + _json_string(model_id)
    if body == "{}":
        return text + "}"
    return text + "," + (body[1:] if body.startswith("{") else body)


def as_text(value: object) -> str:
    """A stored body as text: one that is not (a damaged row) becomes text that does not
    decode as an event."""
    if type(value) is str:
        return value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)


_TEXT_HEADS: Final = {tag: f'{{"type":"{tag}","seq":' for tag in EVENT_TYPES}
# A string that JSON needs no escape for: no quote, backslash or control character.
_needs_no_escape = re.compile(r'[^"\\\x00-\x1f]*').fullmatch


def _json_string(value: str) -> str:
    if _needs_no_escape(value):
        return f'"{value}"'
    return _encode_text(value).decode()


def schema_version(location: str, stored: object) -> int:
    """The ``schema_version`` stored in a log's ``meta``; ``EventLogError`` if not a number."""
    try:
        return int(str(stored))
    except ValueError:
        raise EventLogError(
            f"{location}: meta.schema_version is {stored!r}, not a whole number "
            "(the log is damaged)"
        ) from None


def unknown_type(seq: int, body: str) -> str | None:
    """The ``type`` of row ``seq`` when a newer version wrote it: its envelope is sound (its
    own ``seq``, a ``type``, an ``at`` time) and the type is one this version does not know.
    None for a known type and for a damaged row."""
    try:
        envelope = _envelope_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if envelope.seq != seq or envelope.type in EVENT_TYPES:
        return None
    return envelope.type


def body_text(seq: int, tail: bytes) -> str:
    """The stored JSON of an event: its ``seq`` spliced in front of the rest of its fields.

    Splicing rather than copying the frozen struct keeps the body one encode.
    """
    return (b'{"seq":%d,%s' % (seq, tail)).decode()


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


def _write_events(
    store_ref: weakref.ref[GroupCommitStore], wake: threading.Event, linger: float | None
) -> None:
    """The writer thread: each time it is woken, write what is queued.

    With ``linger`` (a store whose callers commit their own events, see ``_commit_inline``, or
    journal them) appends do not wake it: it looks at the queue every ``linger`` seconds
    instead, writes what has waited since its previous look (events nobody waits for: probes,
    for instance; fresh ones are their callers' to commit) or, with a journal, everything
    queued, and sleeps until woken once it has found nothing to do for a while.

    It holds its store only while it writes: one the program lets go of is collected, and its
    ``__del__`` closes it (and so stops this thread).
    """
    idle = 0
    seen = 0  # the tickets appended by the previous look
    while True:
        timeout = linger
        if linger is not None and idle >= _IDLE_LOOKS:
            store = store_ref()
            if store is None:
                return
            timeout = None if store._doze() else linger
            del store
        woken = wake.wait(timeout)
        store = store_ref()
        if store is None:
            return
        store._asleep = False
        wake.clear()
        busy = bool(store._queue or store._ready)
        # A wake set between the wait's return and the clear above is lost: ``close`` is
        # therefore looked at here, and other callers' events are overdue by the next look.
        overdue = store._committed < seen or (store._journal is not None and busy)
        if (woken or linger is None or store._closing or overdue) and not store._drain():
            return
        seen = store._appended
        store._tidy()
        idle = 0 if busy else idle + 1
        del store


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


class GroupCommitStore(abc.ABC):
    """The backend-independent half of an event store; see the module docstring.

    ``durability``: ``"buffered"``, ``"process"`` (default) or ``"power"``; what each means on
    disk is the backend's to say. ``writer``: this replica's name, stored with each event
    (default: ``default_writer()``). ``max_buffer``: events that may wait in memory.
    ``batch_size``: most events per transaction. ``lock_timeout``: seconds one write may wait
    for another writer before it counts as failed (and is retried). ``close_timeout``: seconds
    ``close`` keeps retrying a failing write before it gives the events up (counted in
    ``dropped``).

    ``resets`` counts the times ``read_others``/``read_since`` found another log behind the
    location (the file was replaced) and so read that log from its start, ignoring ``after``:
    a follower holding a cursor starts over when it changes.

    Counters: ``errors`` (failed writes, unstorable events, other faults of the log),
    ``dropped`` (events given up), ``skipped`` (rows a lenient read could not decode),
    ``unknown`` (per type, the events of types this version does not know that reads skipped,
    each counted once); ``last_error`` describes the latest failure. ``skip_unknown``: whether
    ``read`` skips those events (the default: a newer version's events must not stop an older
    reader) or raises ``EventLogError``.
    """

    def __init__(
        self,
        *,
        durability: Durability | str,
        writer: str | None,
        max_buffer: int,
        batch_size: int,
        strict: bool,
        lock_timeout: float,
        close_timeout: float,
        snapshot_every: int | None = None,
    ) -> None:
        self.durability: Durability = validate_durability(durability)
        self.writer = default_writer() if writer is None else writer
        # What the ``writer`` column holds for this writer's rows: its name, or (SQLite row
        # format 2) its id in the ``writers`` table.
        self.writer_key: object = self.writer
        self.strict = strict
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.lock_timeout = lock_timeout
        self.close_timeout = close_timeout
        self.errors = 0
        self.dropped = 0
        self.skipped = 0
        self.unknown: Counter[str] = Counter()
        self.skip_unknown = True
        self.resets = 0
        # Row format 2 (small rows) for logs of schema version 2; a backend opening an older
        # log sets it to False and keeps writing that log's format 1.
        self.compact = True
        # Whether the log has a ``snapshots`` table (an older log opened read-only may not).
        self.has_snapshots = False
        self.last_error: str | None = None
        # Which log ``read_others``/``read_since`` last read (a backend sets it once open):
        # another one behind the same location is read from its start (see ``_cursor_for``).
        self._read_log: object = None
        # The seqs counted in ``unknown``: a row read again (another query, a re-fold) is
        # counted and reported once.
        self._unknown_seqs: set[int] = set()
        self._unknown_lock = threading.Lock()
        self._queue: deque[Event] = deque()
        self._appended = 0
        # Tickets up to here are done with: committed, or given up (counted in ``dropped``).
        self._committed = 0
        self._failing = False
        self._closing = False
        self._closed = False
        # Set by the backend once its database is open: from then on the store must be closed.
        self._opened = False
        self._progress = threading.Condition()  # guards the state above and the waiters
        self._loops: dict[object, _LoopWaiters] = {}
        self._wake = threading.Event()
        # Callers commit their own events when nobody else waits (``_commit_inline``); the
        # writer then lingers instead of being woken by every append. A backend turns it on.
        self._inline = False
        # Whether the writer lingers (looks at the queue now and then, rather than being woken
        # by every append): a store whose callers commit their own events, or journal them.
        self._lingering = False
        self._asleep = False  # the lingering writer sleeps until woken (see ``_doze``)
        self._drain_lock = threading.Lock()  # one drainer at a time: tickets commit in order
        self._since_checkpoint = 0
        # A file log in ``process`` mode makes its callers' events durable in a journal file
        # (see ``_journal``); the backend sets it. Tickets up to ``_journaled`` are in the
        # journal; ``_taken`` counts the tickets the writer took (from ``_ready``); ``_moving``
        # is the last ticket of the batch being written (recorded in the same transaction).
        self._journal: Journal | None = None
        self._journal_lock = threading.Lock()  # before ``_append_lock`` when both are taken
        self._journaled = 0
        self._taken = 0
        self._moving = 0
        # A journaling store's journaled events with their JSON, for the writer, in ticket
        # order; ``_queue`` then holds only the others.
        self._ready: deque[tuple[Event, bytes | None]] = deque()
        self._journal_kept = False  # unmoved events left in the journal at close
        self._unyielded = 0  # journaled returns since ``wait_committed`` last yielded
        # Whether ``wait_committed`` waits at all (an in-memory log has nothing to wait for).
        self._waits = durability != "buffered"
        self._retry_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._append_lock = threading.Lock()
        self._close_lock = threading.Lock()
        # Snapshots of the fold, kept every ``snapshot_every`` committed events and at close.
        self.snapshots = Snapshots(self, every=snapshot_every)

    # -- what a backend implements -------------------------------------------------------

    # What a read selects of each row: its seq first, then what ``_row_text`` turns into the
    # event's JSON (by default the columns of either row format, put together by
    # ``event_text``; a backend may have the database put the JSON together instead).
    event_columns: str = ROW_COLUMNS

    def _row_text(self, row: Sequence[Any]) -> str:
        """The JSON of the event in ``row`` (selected by ``event_columns``)."""
        return event_text(*row)

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the log is, for messages (never with a password in it)."""

    @abc.abstractmethod
    def _write(self, batch: list[Prepared]) -> None:
        """Store ``batch`` in one transaction, numbered after the log's last ``seq``.

        Called on the writer thread only; raises on failure (the batch is then retried).
        """

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SQL query on the log (``?`` placeholders, tables ``events``/``meta``)."""

    @abc.abstractmethod
    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor."""

    def _log_identity(self) -> object:
        """Which log is behind the location now; a backend whose log can be replaced under it
        says so (the default: always the same one)."""
        return None

    def _cursor_for(self, after: int) -> int:
        """``after``, or 0 once the log behind the location is another one than at the last
        ``read_others``/``read_since``: its seqs are not ours to compare (counted in
        ``resets``)."""
        identity = self._log_identity()
        if identity == self._read_log:
            return after
        self._read_log = identity
        self.resets += 1
        with self._unknown_lock:  # the other log's seqs say nothing about this one's rows
            self._unknown_seqs.clear()
        logger.warning(
            "event log {}: another log file is now at this path; reading it from its start",
            self.location,
        )
        return 0

    @abc.abstractmethod
    def transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run write ``statements`` (SQL with ``?`` placeholders, and their parameters) in one
        transaction; ``EventLogError`` when it fails (nothing of it is then stored)."""

    @abc.abstractmethod
    def json_field(self, key: str) -> str:
        """An SQL expression for the text of top-level field ``key`` of an event's body."""

    @abc.abstractmethod
    def unindexed(self, column: str) -> str:
        """``column`` written so that the query planner does not drive the query by its index."""

    @abc.abstractmethod
    def _close_connection(self) -> None:
        """Release the database once the writer has stopped (reads may still follow)."""

    # -- writing -------------------------------------------------------------------------

    def append(self, event: Event) -> int:
        """Queue ``event`` for the writer; returns its ticket. Never blocks on I/O.

        Raises ``EventLogError`` once the store is closed (or closing).
        """
        with self._append_lock:  # a ticket is the event's place in the queue, even across threads
            # Under the lock, as ``close`` sets it: an event queued after the writer's last look
            # at the queue would be neither written nor counted.
            if self._closing:
                raise EventLogError(f"event log {self.location} is closed")
            if len(self._queue) + len(self._ready) >= self.max_buffer:
                self._overflow(event)
                return self._appended
            self._queue.append(event)
            self._appended += 1
            ticket = self._appended
            if self._thread is None:
                self._start_writer()
        if (not self._lingering or self._asleep or len(self._queue) >= self.batch_size) and (
            not self._wake.is_set()
        ):
            self._wake.set()
        return ticket

    def _count_dropped(self, count: int) -> None:
        with self._progress:  # the writer thread and the callers both count
            self.dropped += count

    def _overflow(self, event: Event) -> None:
        self._count_dropped(1)
        message = (
            f"event log buffer full ({self.max_buffer} events waiting for {self.location}); "
            f"dropped a {event.type} event ({self.dropped} dropped so far)"
        )
        if self.strict:
            raise EventLogError(message)
        logger.error(message)

    def _start_writer(self) -> None:
        self._lingering = self._inline or self._journal is not None
        self._thread = threading.Thread(
            target=_write_events,
            args=(weakref.ref(self), self._wake, _LINGER if self._lingering else None),
            name=f"failover-log-{self.writer}",
            daemon=True,
        )
        self._thread.start()

    def _drain(self) -> bool:
        """Write what is queued, batch by batch; False once the store is closed."""
        while True:
            # Read before the queue: once ``_closing`` is set, nothing more gets queued.
            closing = self._closing
            with self._drain_lock:
                if self._journal is not None:
                    count, batch = self._take()
                else:
                    count = min(self.batch_size, len(self._queue))
                    events = [self._queue.popleft() for _ in range(count)]
                    batch = self._prepare_batch(events) if count else []
                if not count:
                    return not closing
                if not self._store(batch):
                    self._give_up(count)
                    return False
                self._done(count)
                if self._journal is not None and self._journal.retired:
                    with self._journal_lock:
                        self._journal.moved(self._moving)

    def _take(self) -> tuple[int, list[Prepared]]:
        """The next batch of a journaling store: how many tickets it covers, and their rows
        (journaling what is queued first, so that only journaled events are moved)."""
        with self._journal_lock:
            self._journal_queued()
            ready = self._ready
            count = min(self.batch_size, len(ready))
            if count == len(ready):
                rows = list(ready)
                ready.clear()
            else:
                rows = [ready.popleft() for _ in range(count)]
            self._taken += count
            self._moving = self._taken  # the batch's last ticket, recorded with it
        batch: list[Prepared] = []
        for event, raw in rows:
            if raw is None:  # could not be encoded: already dropped and counted
                continue
            try:
                batch.append(compact(event, raw) if self.compact else prepare(event, raw))
            except Exception as exc:  # noqa: BLE001 - one unencodable event must not stop the log
                self._unstorable(exc)
        return count, batch

    def _journal_queued(self) -> None:
        """Move the queued events to ``_ready``, with their JSON, after writing them to the
        journal with one write(2); the caller holds ``_journal_lock``.

        The writer reuses the JSON (the callers pay one encode per event; the writer turns
        it into a row). A failed write breaks the journal (logged): from then on callers wait
        for the log's own commits, as without one.
        """
        with self._append_lock:  # a stable queue: nothing appended between copy and clear
            if not self._queue:
                return
            pending = list(self._queue)
            self._queue.clear()
            upto = self._appended
        records: list[tuple[int, bytes]] = []
        rows: list[tuple[Event, bytes | None]] = []
        for ticket, event in enumerate(pending, upto - len(pending) + 1):
            try:
                raw = encode(event)
            except Exception as exc:  # noqa: BLE001 - one unencodable event must not stop the log
                self._unstorable(exc)
                rows.append((event, None))  # keeps its ticket's place; neither journaled nor stored
                continue
            records.append((ticket, raw))
            rows.append((event, raw))
        journal = self._journal
        if journal is not None and not journal.broken:
            try:
                if records:
                    journal.write(records)
            except OSError as exc:
                self.errors += 1
                self.last_error = f"journal: {type(exc).__name__}: {exc}"
                logger.error(
                    "event log {}: its journal cannot be written ({}); callers wait for the "
                    "log's own commits from now on",
                    self.location,
                    self.last_error,
                )
            else:
                self._journaled = upto
        self._ready.extend(rows)

    def _journal_upto(self, ticket: int) -> bool:
        """Whether ``ticket`` is in the journal now (journaling what is queued if need be)."""
        if self._journaled >= ticket:
            return True
        with self._journal_lock:
            self._journal_queued()
            return self._journaled >= ticket

    def _settle(self, timeout: float = 30.0) -> None:
        """Wait until the events journaled so far are in the log (read-your-writes): at once
        when none is pending, and not while the log cannot be written."""
        target = self._journaled
        if self._committed >= target or threading.current_thread() is self._thread:
            return
        self._wake.set()
        with self._progress:
            self._progress.wait_for(
                lambda: self._committed >= target or self._failing or self._closed, timeout
            )

    def _close_journal(self) -> None:
        """Delete the journal once the log has all of it; keep it for the next opener of the
        log when some of it could not be moved (the log is locked or failing)."""
        journal = self._journal
        if journal is None:
            return
        with self._journal_lock:
            keep = self._journal_kept or self._committed < self._journaled
            journal.close(keep=keep)
        if not keep:
            self._forget_journal(journal.key)

    def _leave_journal_to_parent(self) -> None:
        """In a forked child: the journal and the events pending in it are the parent's (it
        moves them into the log and deletes the files); this copy of the store journals no
        more, and waits for none of them."""
        self._journal_lock = threading.Lock()  # a thread of the parent may have held it
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.abandon()
        self._queue.clear()
        self._ready.clear()
        self._committed = self._taken = self._journaled = self._appended
        self._thread = None  # the parent's writer thread is not in the child

    def _forget_journal(self, key: str) -> None:  # noqa: B027 - only a journaling backend
        """Remove the log's record of how far journal ``key`` was moved (it is deleted)."""

    def _commit_inline(self) -> None:
        """Commit what is queued on the calling thread, if that is quick and nobody is at it.

        A sequential caller in ``process`` mode would otherwise wait for two thread hand-offs
        (wake the writer, wake the loop), several times the commit itself. Only a few events,
        only when the drain is free, and only if the backend can write without waiting for a
        lock (``_write_inline``); otherwise the writer does it, as for everyone else.
        """
        if len(self._queue) > _INLINE_MOST or not self._drain_lock.acquire(blocking=False):
            return
        try:
            if self._closing or self._failing or not self._queue:
                return
            events = list(self._queue)
            try:
                batch = [compact(event) if self.compact else prepare(event) for event in events]
            except Exception:  # noqa: BLE001 - the writer drops and counts what cannot be stored
                return
            if self._write_inline(batch):
                for _ in events:
                    self._queue.popleft()
                self._done(len(events))
        finally:
            self._drain_lock.release()

    def _write_inline(self, batch: list[Prepared]) -> bool:
        """Store ``batch`` at once on the calling thread, or False (nothing stored) if that
        would wait for a lock or fails; a backend that can do so without blocking says so."""
        return False

    def _doze(self) -> bool:
        """The lingering writer found nothing to do for a while: from now appends wake it.
        False if something arrived meanwhile (it looks again instead of sleeping)."""
        self._asleep = True
        if self._queue or self._ready or self._closing:
            self._asleep = False
        return self._asleep

    def _tidy(self) -> None:
        """Upkeep on the writer thread between batches: a checkpoint when one is due."""
        if self._inline and self._since_checkpoint >= _CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            try:
                self._checkpoint()
            except Exception as exc:  # noqa: BLE001 - the next one will try again
                logger.warning("event log {}: checkpoint failed ({})", self.location, exc)

    def _checkpoint(self) -> None:  # noqa: B027 - only a backend whose callers commit inline
        """Move committed pages into the main file (a backend whose callers commit inline)."""

    def _prepare_batch(self, events: list[Event]) -> list[Prepared]:
        batch: list[Prepared] = []
        for event in events:
            try:
                batch.append(compact(event) if self.compact else prepare(event))
            except Exception as exc:  # noqa: BLE001 - one unencodable event must not stop the log
                self._unstorable(exc)
        return batch

    def _unstorable(self, exc: Exception) -> None:
        self._count_dropped(1)
        self.errors += 1
        logger.error(
            "event log {}: dropped an event that cannot be stored ({}: {})",
            self.location,
            type(exc).__name__,
            exc,
        )

    def _store(self, batch: list[Prepared]) -> bool:
        """Commit ``batch``, retrying with backoff; False when ``close`` gave up on it."""
        retry_wait = _FIRST_RETRY
        gave_up_at: float | None = None
        while True:
            try:
                if batch:
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

    def _describe(self, exc: Exception) -> str:
        """How a failure reads in ``last_error`` and the log (a backend may scrub it)."""
        return f"{type(exc).__name__}: {exc}"

    def _write_failed(self, exc: Exception, batch: int) -> None:
        self.errors += 1
        self.last_error = self._describe(exc)
        logger.error(
            "event log {} write failed ({}); {} event(s) kept in memory and retried",
            self.location,
            self.last_error,
            batch + len(self._queue) + len(self._ready),
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
            self._since_checkpoint += count
            self._progress.notify_all()
            due = self._due_loops()
        self._wake_loops(due)
        self.snapshots.committed(count)
        if recovered:
            logger.warning("event log {} writable again", self.location)

    def _give_up(self, in_flight: int) -> None:
        kept = 0
        if self._journal is not None:
            with self._journal_lock:  # what is journaled is not lost: the next open adds it
                self._journal_queued()
                kept = max(0, self._journaled - self._committed)
                self._journal_kept = kept > 0
        lost = in_flight + len(self._queue) + len(self._ready) - kept
        self._queue.clear()
        self._ready.clear()
        if lost:
            self._count_dropped(lost)
            logger.error(
                "event log {} closed with {} event(s) unwritten: {}",
                self.location,
                lost,
                self.last_error,
            )
        if kept:
            logger.error(
                "event log {} closed with {} event(s) not in it yet ({}); they stay in its "
                "journal, and the next store that opens the log adds them",
                self.location,
                kept,
                self.last_error,
            )

    # -- waiting -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run: the log takes no more events."""
        return self._closed

    @property
    def waiting(self) -> int:
        """How many tasks are waiting in ``wait_committed`` (for diagnostics)."""
        with self._progress:
            return sum(len(loop.waiters) for loop in self._loops.values())

    async def wait_committed(self, ticket: int) -> None:
        """Wait until ``ticket`` is committed (``process``/``power``); at once if ``buffered``.

        A store with a journal (a file log in ``process`` mode) writes the queued events to it
        and returns: they survive a crash of the process from then on.

        While the log cannot be written, or once it is closed with the event unwritten, it
        returns without waiting (or raises ``EventLogError`` with ``strict=True``): a failing
        log never holds up model answers.
        """
        if not self._waits or self._committed >= ticket:
            return
        if self._journal is not None and self._journal_upto(ticket):
            # (A strict store has no journal: it waits, to raise while the log fails.) Now and
            # then a journaled return yields to the event loop all the same: a loop of calls to
            # a client that never yields must still let a cancel scope or a timeout fire.
            self._unyielded += 1
            if self._unyielded >= _YIELD_EVERY:
                self._unyielded = 0
                await anyio.lowlevel.checkpoint()
            return
        if self._inline and not self._loops:
            self._commit_inline()  # nobody else waiting: no group to join
            if self._committed >= ticket:
                return
        if not self._wake.is_set():
            self._wake.set()
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
                    raise EventLogError(f"event log {self.location} not written: {self.last_error}")
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
        self._wake.set()
        with self._progress:
            return (
                self._progress.wait_for(
                    lambda: self._committed >= target or self._failing or self._closed, timeout
                )
                and self._committed >= target
            )

    # -- reading -------------------------------------------------------------------------

    def _decode(
        self,
        row: Sequence[Any],
        *,
        lenient: bool,
        news: Counter[str],
        skip_unknown: bool = True,
    ) -> Event | None:
        """The event of ``row`` (``event_columns``), or None for a row skipped; a newly skipped
        event of an unknown type is counted in ``news`` too."""
        seq, column = row[0], row[1]
        body = self._row_text(row)
        try:
            event = decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            tag = unknown_type(seq, body)
            if tag is not None and tag == column:
                if not skip_unknown:
                    raise EventLogError(
                        f"event log {self.location}: row seq={seq} is a {tag!r} event, a type "
                        "this version does not know (upgrade to read it)"
                    ) from exc
                self._count_unknown(seq, tag, news)
                return None
            self._damaged(seq, str(exc), lenient=lenient)
            return None
        if event.type != column:  # the body says another type than its row: damaged
            self._damaged(
                seq, f"its type column says {column!r}, its body {event.type!r}", lenient=lenient
            )
            return None
        return event

    def _damaged(self, seq: int, why: str, *, lenient: bool) -> None:
        """A row that does not decode: skipped and counted, or ``EventLogError``."""
        if not lenient:
            raise EventLogError(
                f"event log {self.location}: row seq={seq} is not a valid event: {why}"
            )
        self.skipped += 1

    def _count_unknown(self, seq: int, tag: str, news: Counter[str]) -> None:
        with self._unknown_lock:
            if seq in self._unknown_seqs:
                return
            self._unknown_seqs.add(seq)
            self.unknown[tag] += 1
        news[tag] += 1

    def _warn_unknown(self, news: Counter[str]) -> None:
        """One line per read that skipped events of types this version does not know."""
        if news:
            logger.warning(
                "event log {}: skipped {} event(s) of types this version does not know: {} "
                "(upgrade to read them)",
                self.location,
                news.total(),
                ", ".join(sorted(news)),
            )

    def read(
        self,
        *,
        after: int = 0,
        where: str = "",
        params: tuple[object, ...] = (),
        lenient: bool = False,
        skip_unknown: bool | None = None,
    ) -> Iterator[Event]:
        """Stored events with ``seq > after``, oldest first, streamed page by page.

        This store's own appends are flushed first. ``where`` is an extra SQL condition on
        the ``events`` columns with ``?`` placeholders filled from ``params``. An event of a
        type this version does not know is skipped, counted in ``unknown`` and logged once per
        read (``skip_unknown=False``, default ``self.skip_unknown``: ``EventLogError``). Any
        other row that does not decode raises ``EventLogError`` naming its seq, or is skipped
        and counted in ``skipped`` with ``lenient=True``.
        """
        self.flush()
        reader = self.reader(where=where, params=params, lenient=lenient, skip_unknown=skip_unknown)
        last = after
        try:
            while True:
                rows = reader.fetch(last)
                for row in rows:
                    event = reader.decode(row)
                    if event is not None:
                        yield event
                if len(rows) < reader.page:
                    return
                last = rows[-1][0]
        finally:  # also when the reader stops early
            reader.done()

    def reader(
        self,
        *,
        where: str = "",
        params: tuple[object, ...] = (),
        lenient: bool = False,
        skip_unknown: bool | None = None,
        page: int = PAGE,
    ) -> RowReader:
        """``read`` in two halves, for a reader that fetches on one thread and decodes on
        another (``RowReader``): the same arguments, the same errors from ``decode``, and
        ``page`` rows at most a fetch. Does not flush this store's appends."""
        skip = self.skip_unknown if skip_unknown is None else skip_unknown
        return RowReader(self, where, params, lenient=lenient, skip_unknown=skip, page=page)

    def read_since(self, after: int) -> tuple[list[tuple[Event, bool]], int]:
        """Every stored event with ``seq > after``, oldest first, each with whether this store
        wrote it, and the new cursor (the highest ``seq`` read, or ``after``).

        This store's own appends are flushed first, so that every event appended before the
        call is in the answer. Rows that do not decode are skipped and counted in ``skipped``
        (events of types this version does not know: in ``unknown``). Another log now behind
        the location is read from its start (counted in ``resets``).
        A follower uses it to put its own events in their ``seq`` order among the others'.
        """
        self.flush()
        sql = (
            f"SELECT writer, {self.event_columns} FROM events "  # noqa: S608 - fixed columns
            f"WHERE seq > ? ORDER BY seq LIMIT {PAGE}"
        )
        found: list[tuple[Event, bool]] = []
        last = after = self._cursor_for(after)
        news: Counter[str] = Counter()
        pace = Pace()  # on a follower's worker thread, beside its event loop
        while True:
            rows = self.query(sql, (last,))
            for writer, *row in rows:
                event = self._decode(row, lenient=True, news=news)
                if event is not None:
                    found.append((event, writer == self.writer_key))
                pace.step()
            if rows:
                last = rows[-1][1]
            if len(rows) < PAGE:
                self._warn_unknown(news)
                return found, last

    def read_written(self, *, after: int, upto: int) -> list[tuple[Event, str]]:
        """The events with ``after < seq <= upto``, oldest first, each with the name of the
        writer that stored it (for copying a log's events elsewhere, e.g. an archive).

        A row this version cannot read, damaged or of an unknown type, raises
        ``EventLogError`` naming its seq: a copy must not leave anything behind.
        """
        sql = (
            f"SELECT writer, {self.event_columns} FROM events "  # noqa: S608 - fixed columns
            f"WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT {PAGE}"
        )
        names = self._writer_names()
        found: list[tuple[Event, str]] = []
        news: Counter[str] = Counter()
        last = after
        while True:
            rows = self.query(sql, (last, upto))
            for writer, *row in rows:
                event = self._decode(row, lenient=False, news=news, skip_unknown=False)
                if event is not None:
                    found.append((event, names.get(writer, str(writer))))
            if len(rows) < PAGE:
                return found
            last = rows[-1][1]

    def _writer_names(self) -> dict[object, str]:
        """What the ``writer`` column holds, to the writers' names (empty: the names)."""
        return {}

    def decode_others(self, rows: Sequence[Sequence[Any]]) -> list[Event]:
        """The events of ``rows`` (``event_columns``) for ``read_others``: rows that do not
        decode are skipped and counted in ``skipped``, events of unknown types in ``unknown``."""
        news: Counter[str] = Counter()
        pace = Pace()  # on a follower's worker thread, beside its event loop
        events: list[Event] = []
        for row in rows:
            event = self._decode(row, lenient=True, news=news)
            if event is not None:
                events.append(event)
            pace.step()
        self._warn_unknown(news)
        return events

    def at_param(self, at: datetime) -> object:
        """The value to compare the ``at`` column with, for ``at``: integer microseconds since
        the Unix epoch (row format 2), ISO text in an older log."""
        return at_micros(at) if self.compact else at_text(utc(at))

    def at_time(self, stored: object) -> datetime:
        """The time an ``at`` column value stands for (either row format)."""
        if isinstance(stored, int):
            return _EPOCH + stored * _MICROSECOND
        return datetime.fromisoformat(str(stored))

    def last_seq(self) -> int:
        """The highest stored ``seq``; 0 for an empty log. Does not wait for queued events (only
        for those this store's callers saw committed, see ``query``)."""
        rows = self.query("SELECT coalesce(max(seq), 0) FROM events")
        return int(rows[0][0])

    def count(self) -> int:
        """How many events are stored. Does not wait for queued events (only for those this
        store's callers saw committed, see ``query``)."""
        rows = self.query("SELECT count(*) FROM events")
        return int(rows[0][0])

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is queued, stop the writer and release the database. Idempotent.

        A failing log is retried for up to ``close_timeout`` seconds; what is still unwritten
        then is logged and counted in ``dropped``. The log stays readable.
        """
        with self._close_lock:
            if not self._closed:
                self._close()

    def _close(self) -> None:
        with self._append_lock:  # no append gets a ticket after this (see ``append``)
            self._closing = True
            writer = self._thread
        self._retry_now.set()
        self._wake.set()
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=self.close_timeout + self.lock_timeout + 30)
        if writer is None or not writer.is_alive() or writer is threading.current_thread():
            # Left behind by a writer that found its store collected, or when the collector
            # closes the store on the writer thread itself.
            self._drain()
        with self._progress:
            self._closed = True
            self._progress.notify_all()
            due = self._due_loops()
        self._wake_loops(due)
        self._close_journal()
        self.snapshots.at_close()
        self._close_connection()

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(
        self,
        _warn: Callable[..., None] = warnings.warn,
        _finalizing: Callable[[], bool] = sys.is_finalizing,
    ) -> None:
        # Not while the interpreter shuts down: the writer thread may be frozen holding a lock.
        if not getattr(self, "_opened", False) or _finalizing():
            return
        try:
            if not self._closed:
                _warn(f"unclosed event log {self.location}", ResourceWarning, source=self)
        finally:  # the warning may be an error (``-W error``): close all the same
            self.close()
            self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Let go of what ``close`` kept for reading, now that the store itself is gone."""


class RowReader:
    """``GroupCommitStore.read`` in two halves: ``fetch`` reads a page of rows (on any thread:
    the database's time), ``decode`` makes one of them an event (Python's time: where the
    caller folds it). ``done`` says once what the read skipped of types this version does not
    know. Made by ``GroupCommitStore.reader``."""

    def __init__(
        self,
        store: GroupCommitStore,
        where: str,
        params: tuple[object, ...],
        *,
        lenient: bool,
        skip_unknown: bool,
        page: int,
    ) -> None:
        condition = f"seq > ? AND ({where})" if where else "seq > ?"
        self._sql = (
            f"SELECT {store.event_columns} FROM events "  # noqa: S608 - fixed columns
            f"WHERE {condition} ORDER BY seq LIMIT {int(page)}"
        )
        self.page = page
        self._store = store
        self._params = params
        self._lenient = lenient
        self._skip = skip_unknown
        self._news: Counter[str] = Counter()

    def fetch(self, after: int) -> list[tuple[Any, ...]]:
        """The next page (``page`` rows at most, fewer at the end) with ``seq > after``."""
        return self._store.query(self._sql, (after, *self._params))

    def decode(self, row: Sequence[Any]) -> Event | None:
        """The event of ``row`` (its seq is ``row[0]``), or None for a row skipped."""
        return self._store._decode(
            row, lenient=self._lenient, news=self._news, skip_unknown=self._skip
        )

    def done(self) -> None:
        """The read is over: one warning for the events of unknown types it skipped."""
        self._store._warn_unknown(self._news)
        self._news.clear()
