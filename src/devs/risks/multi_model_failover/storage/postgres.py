"""The PostgreSQL event store: one log shared by a fleet of replicas on many hosts.

The queue, the group-committing writer thread, the waiters and the retries are shared with the
SQLite store (``_group_commit``). The writer is a thread with a connection of its own, not an
async task: psycopg's async API runs on asyncio only, and this engine also runs on trio.
Reads (``read``, ``query``, ``read_others``, ``last_seq``, ``count``) go through a small
``psycopg_pool.ConnectionPool``; a listener thread with one more connection follows the other
replicas' commits (LISTEN/NOTIFY).

The log lives in one PostgreSQL schema (``schema``, default ``failover``): tables ``events``
and ``meta`` with the same columns and the same JSON text as the SQLite log, so readers (the
CLI) write one SQL for both, with ``?`` placeholders.

Durability modes:

- ``buffered``: callers never wait; ``synchronous_commit=off``.
- ``process`` (default): ``wait_committed`` returns once the server has committed the event
  (``synchronous_commit=off``: the commit is acknowledged before the server flushes its WAL).
  A crash of our process loses nothing a caller saw returned; a crash of the *server* may lose
  its last fraction of a second (at most three ``wal_writer_delay``, 0.6 s by default).
- ``power``: ``synchronous_commit=on``: each commit is flushed to disk on the server (and to
  its synchronous standbys, where the server has any) before ``wait_committed`` returns.

A server that is down or a connection that is lost mid-run is a failing write like any other:
the batch is kept and retried with backoff, ``errors`` counts the failures, a loud log line
says so and ``wait_committed`` returns at once (``strict=True``: raises). The writer reconnects
when the server is back and writes the buffered events. A batch whose commit was in flight when
the connection broke is looked up before it is written again, so it never lands twice.

The password of ``url`` never reaches a ``repr``, a log line or an exception: they show
``url`` with the password left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache, partial
from typing import Any, Final

import msgspec
import psycopg
from loguru import logger
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ..core.errors import EventLogError, SchemaVersionError
from ..core.events import SCHEMA_VERSION, Event
from ..core.protocols import Durability
from ..core.scrub import scrub
from ._group_commit import (
    INDEXED,
    ROW_COLUMNS,
    TYPE_INDEX,
    GroupCommitStore,
    Prepared,
    body_text,
    schema_version,
)
from .snapshots import SNAPSHOT_EVERY, SNAPSHOTS_CUT_INDEX, SNAPSHOTS_TABLE

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_SYNCHRONOUS_COMMIT: Final = {"buffered": "off", "process": "off", "power": "on"}
_LISTEN_TICK: Final = 0.5
_POOL_WAIT: Final = 1.0  # seconds a read waits for a pooled connection before making its own
_FIRST_RECONNECT: Final = 0.05
_LAST_RECONNECT: Final = 5.0
_MASK: Final = "***"

_SNAPSHOTS: Final = SNAPSHOTS_TABLE.format(int="bigint", blob="bytea")
_COPY: Final = "COPY events (seq, type, at, call_id, model_id, writer, body) FROM STDIN"
_COLUMNS: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq bigint PRIMARY KEY,
    type text COLLATE "C" NOT NULL,
    at bigint NOT NULL,
    call_id text COLLATE "C",
    model_id text COLLATE "C",
    writer text COLLATE "C" NOT NULL,
    body text NOT NULL
)
"""


def masked_url(url: str) -> str:
    """``url`` as ``postgresql://user@host:port/dbname``: no password, no other parameter."""
    params = _parse(url)
    user = params.get("user")
    host = params.get("host", "")
    port = params.get("port")
    where = f"{user}@" if user else ""
    where += host if "/" not in host else urllib.parse.quote(host, safe="")
    where += f":{port}" if port else ""
    return f"postgresql://{where}/{params.get('dbname', '')}"


def _parse(url: str) -> dict[str, str]:
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        # The driver's message quotes the text, password and all: say less.
        raise EventLogError(
            "not a valid PostgreSQL URL (expected postgresql://user@host:port/dbname; "
            "the text is not shown, it may hold a password)"
        ) from None
    return {key: str(value) for key, value in params.items() if value is not None}


def _lock_key(schema: str) -> int:
    """The advisory lock of one log: a stable signed 64-bit number from its schema name."""
    digest = hashlib.blake2b(f"devs.risks.multi_model_failover:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


@lru_cache(maxsize=256)
def to_psycopg(query: str) -> str:
    """``query`` with SQLite's ``?`` placeholders as psycopg's ``%s`` (and ``%`` as ``%%``).

    A ``?`` inside a quoted string or identifier stays as it is. Dollar-quoted strings and
    comments are not parsed, and PostgreSQL's ``?`` jsonb operators cannot be written (use
    ``jsonb_exists``).
    """
    out: list[str] = []
    quote = ""
    for char in query:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append("%%" if char == "%" else char)
    return "".join(out)


def _configure(conn: psycopg.Connection[Any], *, schema: str, durability: Durability) -> None:
    """Every connection finds the log's tables by name and commits as ``durability`` says.

    All our connections are in autocommit mode: the writer runs its own BEGIN ... COMMIT.
    """
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute(f"SET synchronous_commit = {_SYNCHRONOUS_COMMIT[durability]}")


def _text_column(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; the body keeps the exact value (JSON escapes it).
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _compact_body(body: bytes, call_id: str | None, model_id: str | None) -> str:
    """A row-format-2 body; a column value that PostgreSQL text cannot hold exactly (a NUL)
    stays in the body too, where it wins over the column when the row is read back."""
    exact = b"".join(
        b'"%s":%s,' % (key, msgspec.json.encode(value))
        for key, value in ((b"call_id", call_id), (b"model_id", model_id))
        if value is not None and "\x00" in value
    )
    if not exact:
        return body.decode()
    return (b"{" + exact + body[1:] if body != b"{}" else b"{" + exact[:-1] + b"}").decode()


class PostgresEventStore(GroupCommitStore):
    """An event log in a PostgreSQL database, shared by every replica that opens it.

    ``url``: a libpq URL (``postgresql://user@host:port/dbname``); a password in it is never
    shown. ``password``: the password given apart from the URL (e.g. read from an environment
    variable); libpq's ``PGPASSWORD`` and ``~/.pgpass`` work too. ``durability``:
    ``"buffered"``, ``"process"`` (default) or ``"power"`` (see the module docstring).
    ``writer``: this replica's name, stored with each event (default: host name, process id
    and a random suffix); it must differ between the stores on one log. ``schema``: the
    PostgreSQL schema that holds the log's tables. ``create=False`` opens an existing log
    only (for readers such as the CLI). ``lock_timeout``: seconds a write waits for another
    replica's write before it counts as failed (and is retried). ``connect_timeout``: seconds
    to reach the server. ``poll_interval``: the longest ``read_others`` trusts the
    notifications alone (see there). ``follow_interval``: how often an engine on this store
    calls ``read_others`` (the engine reads it). ``pool_size``: most connections for reads.
    Counters and the other options: see ``GroupCommitStore``; ``lookups`` counts the
    ``read_others`` calls that queried the server.

    Raises ``EventLogError`` naming the server (never the password) when the server cannot
    be reached or the schema holds something else, ``SchemaVersionError`` for a newer log.
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        durability: Durability | str = "process",
        writer: str | None = None,
        schema: str = "failover",
        create: bool = True,
        max_buffer: int = 1_000_000,
        batch_size: int = 2_000,
        strict: bool = False,
        lock_timeout: float = 1.0,
        close_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        poll_interval: float = 1.0,
        follow_interval: float = 0.1,
        pool_size: int = 4,
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
            snapshot_every=snapshot_every,
        )
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must be a lower-case SQL name (a-z, 0-9, _), got {schema!r}")
        if not self.writer or "\x00" in self.writer:
            raise ValueError("writer must be a non-empty name without NUL characters")
        self.url = masked_url(url)
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self.follow_interval = follow_interval
        self.pool_size = pool_size
        self.lookups = 0  # read_others calls that queried the server (for diagnostics)
        self._conninfo = url
        # Not a bound method: the pool keeps it, and must not keep the store alive.
        self._configure: Callable[[psycopg.Connection[Any]], None] = partial(
            _configure, schema=schema, durability=self.durability
        )
        self._password = password
        self._secrets = self._password_forms(url, password)
        # The advisory lock that serializes the replicas' writes (pg_locks shows it).
        self.lock_key = _lock_key(schema)
        self._begin_batch = sql.SQL(
            "BEGIN; SELECT pg_advisory_xact_lock({}); SELECT coalesce(max(seq), 0) FROM events"
        ).format(sql.Literal(self.lock_key))
        # With snapshots: a seq is never given twice, even once an archive moved every event.
        self._begin_batch_after_snapshots = sql.SQL(
            "BEGIN; SELECT pg_advisory_xact_lock({}); SELECT greatest("
            "(SELECT coalesce(max(seq), 0) FROM events), "
            "(SELECT coalesce(max(cursor), 0) FROM snapshots))"
        ).format(sql.Literal(self.lock_key))
        self._channel = f"{schema}.events"
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] | None = None
        self._pool_lock = threading.Lock()
        # Following other replicas: the listener notes what they announce (see read_others).
        self._follow_lock = threading.Lock()
        self._notified = 0
        self._listening_since: float | None = None
        self._last_lookup: tuple[float, float | None, int] | None = None
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()
        # The writer's own connection, and what it knows of its last commit.
        self._last_written = 0
        self._in_doubt = False
        self._writer_conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._writer_conn = self._connect("write", autocommit=True)
        try:
            self._last_written = self._open_log(self._writer_conn, create=create)
            self._claim_writer(self._writer_conn)
        except BaseException:
            self._writer_conn.close()
            raise
        self._opened = True

    def _claim_writer(self, conn: psycopg.Connection[Any]) -> None:
        """Hold a session lock on this writer's name for as long as ``conn`` lives.

        Two live processes with one name would not see each other's events (``read_others``
        skips the name) and would confuse the lost-commit check; a crashed one's lock goes
        with its connection. Raises ``EventLogError`` when another process holds the name.
        """
        key = _lock_key(f"{self.schema}/writer/{self.writer}")
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (row and row[0]):
            raise EventLogError(
                f"replica name {self.writer!r} is in use by another process on "
                f"{self.location}: each replica needs a name of its own (leave it unset "
                "for host-pid-id)"
            )

    def __repr__(self) -> str:
        return (
            f"PostgresEventStore({self.url!r}, durability={self.durability!r}, "
            f"schema={self.schema!r})"
        )

    @property
    def location(self) -> str:
        """The masked URL and the schema, for messages."""
        return f"{self.url} (schema {self.schema})"

    # -- connections ---------------------------------------------------------------------

    @staticmethod
    def _password_forms(url: str, password: str | None) -> tuple[str, ...]:
        """The passwords as they may appear in a message: as given, and URL-encoded."""
        given = [password, _parse(url).get("password")]
        forms = {form for p in given if p for form in (p, urllib.parse.quote(p, safe=""))}
        return tuple(sorted(forms, key=len, reverse=True))

    def _connection_options(self, purpose: str) -> dict[str, Any]:
        """What we add to the URL's parameters (those the URL sets itself win)."""
        params = _parse(self._conninfo)
        options: dict[str, Any] = {}
        if self._password is not None:
            options["password"] = self._password
        if "connect_timeout" not in params:
            options["connect_timeout"] = max(1, round(self.connect_timeout))
        if "application_name" not in params:
            options["application_name"] = f"failover-{purpose}-{self.writer}"[:63]
        return options

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc).strip()
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return scrub(text)

    def _describe(self, exc: Exception) -> str:
        return f"{type(exc).__name__}: {self._scrub(exc)}"

    def _connect(self, purpose: str, *, autocommit: bool) -> psycopg.Connection[tuple[Any, ...]]:
        """A configured connection; ``EventLogError`` (driver's words, scrubbed) if none."""
        options = self._connection_options(purpose)
        try:
            conn = psycopg.connect(self._conninfo, autocommit=autocommit, **options)
        except psycopg.Error as exc:
            raise EventLogError(
                f"cannot connect to the PostgreSQL event log {self.url}: {self._scrub(exc)}"
            ) from None
        try:
            self._configure(conn)
            if purpose == "write":
                conn.execute(f"SET lock_timeout = {max(1, round(self.lock_timeout * 1000))}")
        except psycopg.Error as exc:
            conn.close()
            raise EventLogError(
                f"cannot set up a connection to {self.url}: {self._scrub(exc)}"
            ) from None
        return conn

    def _open_log(self, conn: psycopg.Connection[Any], *, create: bool) -> int:
        """Check (or create) the schema; returns the log's last ``seq``."""
        try:
            with conn.transaction():
                if create:  # several replicas may start at once: one creates, the others wait
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
                self._check_tables(conn, create=create)
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        except psycopg.Error as exc:
            raise EventLogError(
                f"cannot open the PostgreSQL event log {self.location}: {self._scrub(exc)}"
            ) from None
        return int(row[0]) if row else 0

    def _add_cut_index(self, conn: psycopg.Connection[Any]) -> None:
        """Give a log from before it the index that finds its cut. Only when it is missing:
        ``CREATE INDEX`` checks that the role owns the table and locks it even when the index
        exists. A role that may not (rows granted, the table another's), or a table busy past
        the lock timeout: the log goes on without it (loads then scan, slower, same)."""
        found = conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.snapshots_cut",))
        if found.fetchone() not in (None, (None,)):
            return
        try:
            with conn.transaction():  # a savepoint: a failure leaves the open's transaction
                conn.execute(SNAPSHOTS_CUT_INDEX)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.LockNotAvailable) as exc:
            logger.info(
                "event log {}: no index on its cut ({}); loads scan the snapshots instead",
                self.location,
                self._scrub(exc),
            )

    def _check_tables(self, conn: psycopg.Connection[Any], *, create: bool) -> None:
        names = (f"{self.schema}.events", f"{self.schema}.meta")
        found = conn.execute("SELECT to_regclass(%s), to_regclass(%s)", names).fetchone()
        have = [name is not None for name in found or (None, None)]
        if all(have):
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = schema_version(self.location, row[0]) if row else 0
            self.compact = version >= 2
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.location} was written with event-log schema version {version}; "
                    f"this version reads up to {SCHEMA_VERSION}: upgrade "
                    "devs-risks-multi-model-failover"
                )
            if create:  # a log from before snapshots
                conn.execute(_SNAPSHOTS)
            self.has_snapshots = conn.execute(
                "SELECT to_regclass(%s)", (f"{self.schema}.snapshots",)
            ).fetchone() not in (None, (None,))
            if create and self.has_snapshots:
                self._add_cut_index(conn)
            return
        if any(have):
            raise EventLogError(
                f"schema {self.schema} of {self.url} holds tables but not a failover event log"
            )
        if not create:
            raise EventLogError(f"no event log in schema {self.schema} of {self.url}")
        self._create_tables(conn)

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO NOTHING",
            (str(SCHEMA_VERSION),),
        )
        conn.execute(_COLUMNS)
        for column in INDEXED:
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON events ({})").format(
                    sql.Identifier(f"events_{column}"), sql.Identifier(column)
                )
            )
        conn.execute(TYPE_INDEX)
        conn.execute(_SNAPSHOTS)
        conn.execute(SNAPSHOTS_CUT_INDEX)
        self.has_snapshots = True

    # -- writing -------------------------------------------------------------------------

    def _write(self, batch: list[Prepared]) -> None:
        conn = self._writer_conn
        if conn is None or conn.closed or conn.broken:
            self._drop_writer_connection()
            conn = self._writer_conn = self._connect("write", autocommit=True)
            try:
                self._claim_writer(conn)
            except EventLogError as exc:  # taken while we were away: say so, keep writing
                logger.error("event log {}: {}", self.location, exc)
            if self._in_doubt and self._landed(conn, batch):
                return
        try:
            self._insert(conn, batch)
        except psycopg.Error:
            if conn.broken:  # the commit may have landed or not: look before writing again
                self._in_doubt = True
            raise
        self._in_doubt = False

    def _insert(self, conn: psycopg.Connection[Any], batch: list[Prepared]) -> None:
        """One transaction in three round trips: lock and read the last seq, COPY, notify and
        commit. (COPY measured 4x faster than one INSERT ... unnest() at 2,000 rows a batch and
        as fast at one row; executemany sits between.)

        Why not an identity column: its values are taken before commit (a reader with a
        ``seq > after`` cursor would skip a row that commits late) and lost on rollback (gaps).
        The advisory lock serializes the replicas' batches, so each numbers its rows from the
        max committed before it and commit order is ``seq`` order. The notification is sent at
        commit and carries the writer and its last ``seq``.
        """
        try:
            cursor = conn.execute(
                self._begin_batch_after_snapshots if self.has_snapshots else self._begin_batch
            )
            while cursor.nextset():  # BEGIN, the lock, then the max: its row is the last result
                pass
            row = cursor.fetchone()
            last = int(row[0]) if row else 0
            with conn.cursor() as rows, rows.copy(_COPY) as copy:
                for seq, (tag, at, call_id, model_id, tail) in enumerate(batch, last + 1):
                    copy.write_row(
                        (
                            seq,
                            tag,
                            at,
                            _text_column(call_id),
                            _text_column(model_id),
                            self.writer,
                            _compact_body(tail, call_id, model_id)
                            if self.compact
                            else body_text(seq, tail),
                        )
                    )
            last += len(batch)
            conn.execute(
                sql.SQL("SELECT pg_notify({}, {}); COMMIT").format(
                    sql.Literal(self._channel), sql.Literal(f"{self.writer} {last}")
                )
            )
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
        self._last_written = last

    def _landed(self, conn: psycopg.Connection[Any], batch: list[Prepared]) -> bool:
        """Whether the batch in doubt was committed after all (then it is not written again).

        A batch lands whole; it is ours if the first row after our last known commit under
        our name holds the batch's first event, byte for byte.
        """
        row = conn.execute(
            "SELECT seq, body FROM events WHERE seq > %s AND writer = %s ORDER BY seq LIMIT 1",
            (self._last_written, self.writer),
        ).fetchone()
        self._in_doubt = False
        _, _, call_id, model_id, first = batch[0]
        body = _compact_body(first, call_id, model_id) if self.compact else None
        if row is None or row[1] != (body if body is not None else body_text(row[0], first)):
            return False
        self._last_written = int(row[0]) + len(batch) - 1
        logger.warning(
            "event log {}: the batch in flight when the connection broke was committed; "
            "it is not written again",
            self.location,
        )
        return True

    def _drop_writer_connection(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            conn.close()

    # -- reading -------------------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]]:
        with self._pool_lock:
            if self._pool is None:
                kwargs = {"autocommit": True, **self._connection_options("read")}
                self._pool = ConnectionPool(
                    self._conninfo,
                    kwargs=kwargs,
                    configure=self._configure,
                    check=ConnectionPool.check_connection,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.connect_timeout,
                    name=f"failover-{self.writer}",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A read connection: from the pool, else (after ``close``, or while the pool has none
        to give) one of its own."""
        pool = None if self._closed else self._get_pool()
        if pool is not None:
            try:
                pooled = pool.getconn(timeout=_POOL_WAIT)
            except PoolTimeout:
                # After an outage the pool waits seconds between its reconnection attempts: a
                # connection of our own says at once whether the server is back, and a new
                # pool takes over from the next read.
                self._discard_pool(pool)
            else:
                try:
                    yield pooled
                finally:
                    pool.putconn(pooled)
                return
        conn = self._connect("read", autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    def _discard_pool(self, pool: ConnectionPool[Any]) -> None:
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        # Its workers may be sleeping between attempts: let them finish off the caller's path.
        threading.Thread(target=pool.close, name="failover-pool-close", daemon=True).start()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SQL query on the log (tables ``events`` and ``meta``).

        ``?`` placeholders, as for SQLite (see ``to_psycopg``). Works after ``close``; a
        database error becomes ``EventLogError``. Does not wait for queued events.
        """
        try:
            with self._reading() as conn:
                cursor = conn.execute(to_psycopg(sql), tuple(params))
                return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            raise EventLogError(
                f"cannot read event log {self.location}: {self._scrub(exc)}"
            ) from exc

    def transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run write ``statements`` (``?`` placeholders) in one transaction on a pooled
        connection; a database error becomes ``EventLogError``."""
        try:
            with self._reading() as conn, conn.transaction():
                for statement, params in statements:
                    conn.execute(to_psycopg(statement), tuple(params))
        except psycopg.Error as exc:
            raise EventLogError(
                f"cannot write event log {self.location}: {self._scrub(exc)}"
            ) from exc

    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor.

        Cheap enough to call ten times a second: while the listener has been connected since
        the last lookup, no other replica announced a ``seq`` beyond ``after`` and less than
        ``poll_interval`` seconds passed since that lookup, it returns ``([], after)`` without
        a query. Otherwise it looks up the rows (one query; ``lookups`` counts them). So a
        lost notification delays another replica's events by ``poll_interval`` at most. Rows
        that do not decode are skipped and counted (see ``decode_others``).
        """
        self._start_listener()
        if self._nothing_new(after):
            return [], after
        with self._follow_lock:
            listening = self._listening_since
        started = time.monotonic()
        rows, cursor = self._others(after)
        with self._follow_lock:
            self.lookups += 1
            self._last_lookup = (started, listening, cursor)
        events = self.decode_others(rows)
        return events, max(cursor, after)

    def _nothing_new(self, after: int) -> bool:
        with self._follow_lock:
            if self._last_lookup is None or self._closed:
                return False
            started, listening, cursor = self._last_lookup
            return (
                listening is not None
                and listening == self._listening_since  # no reconnect since: nothing missed
                and after >= cursor
                and self._notified <= after
                and time.monotonic() - started < self.poll_interval
            )

    def _others(self, after: int) -> tuple[list[tuple[Any, ...]], int]:
        # Commit order is seq order: every row up to the max seen is committed, none can
        # appear below it later, so the cursor never skips a row.
        try:
            with self._reading() as conn, conn.transaction():
                top = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                cursor = int(top[0]) if top else 0
                rows = conn.execute(
                    f"SELECT {ROW_COLUMNS} FROM events "  # noqa: S608 - fixed columns
                    "WHERE seq > %s AND seq <= %s AND writer <> %s ORDER BY seq",
                    (after, cursor, self.writer),
                ).fetchall()
        except psycopg.Error as exc:
            raise EventLogError(
                f"cannot read event log {self.location}: {self._scrub(exc)}"
            ) from exc
        return rows, cursor

    # -- following other replicas ----------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the listener is connected, following the other replicas' commits.

        It starts with the first ``read_others`` and reconnects on its own.
        """
        with self._follow_lock:
            return self._listening_since is not None

    def _start_listener(self) -> None:
        with self._follow_lock:
            if self._listener is not None or self._closing:
                return
            self._listener = threading.Thread(
                target=_follow_peers,
                args=(weakref.ref(self), self._stop_listening),
                name=f"failover-listen-{self.writer}",
                daemon=True,
            )
        self._listener.start()

    def _listening_connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection that listens to the log's channel."""
        conn = self._connect("listen", autocommit=True)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            conn.close()
            raise
        with self._follow_lock:
            self._listening_since = time.monotonic()
        return conn

    def _not_listening(self, exc: Exception | None) -> None:
        with self._follow_lock:
            self._listening_since = None
        if exc is not None and not self._stop_listening.is_set():
            logger.warning(
                "event log {}: no notifications from the other replicas ({}); reconnecting, "
                "and reading their events every {} s meanwhile",
                self.location,
                self._scrub(exc),
                self.poll_interval,
            )

    def _noted(self, payload: str) -> None:
        writer, _, seq = payload.rpartition(" ")
        with self._follow_lock:
            if not seq.isdigit():  # not one of ours: look, to be safe
                self._last_lookup = None
            elif writer != self.writer:
                self._notified = max(self._notified, int(seq))

    def _stop_listener(self) -> None:
        self._stop_listening.set()
        with self._follow_lock:
            listener = self._listener
        if listener is None or listener is threading.current_thread():
            return
        conn = self._writer_conn
        if conn is not None and not conn.broken:  # wake it now rather than at its next tick
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_notify(%s, 'closing')", (self._channel,))
        listener.join(timeout=self.connect_timeout + _LISTEN_TICK + 5)

    # -- dialect -------------------------------------------------------------------------

    def json_field(self, key: str) -> str:
        """``(body::jsonb ->> 'key')``."""
        if not key.isidentifier():
            raise ValueError(f"not a field name: {key!r}")
        return f"(body::jsonb ->> '{key}')"

    def unindexed(self, column: str) -> str:
        """``column`` as it is: PostgreSQL's planner weighs its indexes by their statistics."""
        return column

    # -- closing -------------------------------------------------------------------------

    def _close_connection(self) -> None:
        self._stop_listener()
        self._drop_writer_connection()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _release(self) -> None:
        """Nothing: after ``close`` each read opens and closes a connection of its own."""


# -- the listener thread -----------------------------------------------------------------------


def _follow_peers(store_ref: weakref.ref[PostgresEventStore], stop: threading.Event) -> None:
    """The listener thread: note what the other replicas announce (see ``read_others``),
    reconnecting with backoff, until told to stop or the store is gone.

    Like the writer thread, it holds its store only for a moment at a time (a connection, one
    notification), so that an unclosed store can be collected, and closed.
    """
    wait = _FIRST_RECONNECT
    while not stop.is_set():
        store = store_ref()
        if store is None:
            return
        try:
            conn = store._listening_connection()
        except (psycopg.Error, EventLogError) as exc:
            store._not_listening(exc)
        else:
            del store
            wait = _FIRST_RECONNECT
            failure = _relay(conn, store_ref, stop)
            conn.close()
            store = store_ref()
            if store is None:
                return
            store._not_listening(failure)
        del store
        stop.wait(wait)
        wait = min(wait * 2, _LAST_RECONNECT)


def _relay(
    conn: psycopg.Connection[Any], store_ref: weakref.ref[PostgresEventStore], stop: threading.Event
) -> psycopg.Error | None:
    """Hand each notification on ``conn`` to the store, until told to stop, the store is gone
    or the connection fails (returned)."""
    try:
        while not stop.is_set():
            for note in conn.notifies(timeout=_LISTEN_TICK):
                store = store_ref()
                if store is None or stop.is_set():
                    return None
                store._noted(note.payload)
                del store
            if store_ref() is None:
                return None
    except psycopg.Error as exc:
        return exc
    return None
