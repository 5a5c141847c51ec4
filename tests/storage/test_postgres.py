"""The PostgreSQL event store: the backend contract on a real server, then what only a shared
server log does: following other replicas (LISTEN/NOTIFY and the poll fallback), a server that
goes away and comes back, concurrent writers and creators, schema versions, passwords, and the
CLI's queries giving the same answers as on SQLite.

Every test gets a fresh database on a throwaway cluster (``conftest.py``); where no server can
run, these tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")

from devs.risks.multi_model_failover.adapters.cli.queries import EventFilter, read_events  # noqa: E402
from devs.risks.multi_model_failover.core.errors import (  # noqa: E402
    ErrorKind,
    EventLogError,
    SchemaVersionError,
)
from devs.risks.multi_model_failover.core.events import (  # noqa: E402
    SCHEMA_VERSION,
    AttemptStarted,
    EngineStarted,
    Failover,
    Maintenance,
)
from devs.risks.multi_model_failover.storage._group_commit import at_micros, compact  # noqa: E402
from devs.risks.multi_model_failover.storage.postgres import (  # noqa: E402
    PostgresEventStore,
    masked_url,
    to_psycopg,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore  # noqa: E402

from .contract import T0, EventStoreContract, attempt, let_go  # noqa: E402
from .pg_server import Cluster, stopped  # noqa: E402

pytestmark = pytest.mark.anyio

GUARD = 10.0  # seconds: a hang guard, never a timing assertion
STARTED = EngineStarted(at=T0, models=("a", "b"))


def wait_until(condition: Any, timeout: float = GUARD) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)


def admin(url: str) -> psycopg.Connection[Any]:
    """A connection of the test's own, as an operator or another program would have."""
    return psycopg.connect(url, autocommit=True)


def store_on(url: str, schema: str = "failover", **options: Any) -> PostgresEventStore:
    """A store that waits long enough for locks not to fail a test by accident."""
    options.setdefault("lock_timeout", 10.0)
    return PostgresEventStore(url, schema=schema, **options)


class TestPostgresStore(EventStoreContract):
    """The contract on a server; faults come from a second connection of the test's own."""

    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> Iterator[None]:
        self.url = pg_url
        self.made = 0
        with admin(pg_url) as conn:
            self.admin = conn
            yield

    def make_store(self, durability: str = "process", **options: Any) -> PostgresEventStore:
        self.made += 1  # a schema per store: each new store starts on an empty log
        return store_on(self.url, f"log_{self.made}", durability=durability, **options)

    def reopen(self, store: Any) -> PostgresEventStore:
        return store_on(self.url, store.schema)

    def peer(self, store: Any) -> PostgresEventStore:
        return store_on(self.url, store.schema, durability="buffered")

    def corrupt(self, store: Any, seq: int) -> None:
        self.admin.execute(
            f'UPDATE {store.schema}.events SET body = \'{{"type": "nonsense\' WHERE seq = %s',  # noqa: S608 - the test's own schema name
            (seq,),
        )

    def overwrite(self, store: Any, seq: int, type_: str, body: str) -> None:
        self.admin.execute(
            f"UPDATE {store.schema}.events SET type = %s, body = %s WHERE seq = %s",  # noqa: S608 - the test's own schema name
            (type_, body, seq),
        )

    @contextlib.contextmanager
    def refuse_writes(self, store: Any) -> Iterator[None]:
        schema = store.schema
        self.admin.execute(
            f"CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'writes refused by the test'; END $$"
        )
        self.admin.execute(
            f"CREATE TRIGGER refuse_writes BEFORE INSERT ON {schema}.events "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse()"
        )
        try:
            yield
        finally:
            self.admin.execute(f"DROP TRIGGER refuse_writes ON {schema}.events")
            self.admin.execute(f"DROP FUNCTION {schema}.refuse()")

    @contextlib.contextmanager
    def hold_writes(self, store: Any) -> Iterator[None]:
        # What another replica's batch does: hold the log's advisory lock.
        self.admin.execute("SELECT pg_advisory_lock(%s)", (store.lock_key,))
        try:
            yield
        finally:
            self.admin.execute("SELECT pg_advisory_unlock(%s)", (store.lock_key,))


# -- opening -------------------------------------------------------------------------------


def test_the_schema_has_the_sqlite_columns_indexes_and_version(pg_url: str) -> None:
    store_on(pg_url).close()
    with admin(pg_url) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'failover' AND table_name = 'events' ORDER BY ordinal_position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'failover' "
            "AND tablename = 'events' ORDER BY indexname"
        ).fetchall()
        (version,) = conn.execute(
            "SELECT value FROM failover.meta WHERE key = 'schema_version'"
        ).fetchone()
    assert columns == [
        ("seq", "bigint", "NO"),
        ("type", "text", "NO"),
        ("at", "bigint", "NO"),
        ("call_id", "text", "YES"),
        ("model_id", "text", "YES"),
        ("writer", "text", "NO"),
        ("body", "text", "NO"),
    ]
    assert [name for (name,) in indexes] == [
        "events_at",
        "events_call_id",
        "events_pkey",
        "events_type_rare",
    ]
    assert int(version) == SCHEMA_VERSION


def test_a_newer_schema_version_is_refused(pg_url: str) -> None:
    store_on(pg_url).close()
    with admin(pg_url) as conn:
        conn.execute(
            "UPDATE failover.meta SET value = %s WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION + 1),),
        )
    for create in (True, False):
        with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
            store_on(pg_url, create=create)


def test_a_schema_version_that_is_not_a_number_is_named(pg_url: str) -> None:
    store_on(pg_url).close()
    with admin(pg_url) as conn:
        conn.execute("UPDATE failover.meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(EventLogError, match=r"meta\.schema_version is 'one'"):
        store_on(pg_url, create=False)


def test_a_missing_log_is_not_created_when_create_is_false(pg_url: str) -> None:
    with pytest.raises(EventLogError, match="no event log in schema failover"):
        store_on(pg_url, create=False)
    with admin(pg_url) as conn:
        found = conn.execute("SELECT to_regnamespace('failover')").fetchone()
    assert found == (None,)


def test_a_schema_of_something_else_is_refused_untouched(pg_url: str) -> None:
    with admin(pg_url) as conn:
        conn.execute("CREATE SCHEMA failover")
        conn.execute("CREATE TABLE failover.events (customer text)")
        for create in (True, False):
            with pytest.raises(EventLogError, match="not a failover event log"):
                store_on(pg_url, create=create)
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'failover'"
        ).fetchall()
    assert tables == [("events",)]


def test_bad_names_are_value_errors(pg_url: str) -> None:
    with pytest.raises(ValueError, match="schema must be"):
        PostgresEventStore(pg_url, schema="Robert'); DROP TABLE students;--")
    with pytest.raises(ValueError, match="durability must be one of"):
        PostgresEventStore(pg_url, durability="eventually")


def test_replicas_starting_at_once_create_one_log(pg_url: str) -> None:
    stores: list[PostgresEventStore] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(store_on(pg_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert failures == []
    assert len(stores) == 8
    assert stores[0].query("SELECT count(*) FROM meta") == [(1,)]
    for store in stores:
        store.close()


@pytest.mark.parametrize(
    ("durability", "setting"), [("buffered", "off"), ("process", "off"), ("power", "on")]
)
def test_durability_sets_synchronous_commit(pg_url: str, durability: str, setting: str) -> None:
    store = store_on(pg_url, durability=durability)
    assert store.query("SHOW synchronous_commit") == [(setting,)]
    store.close()


# -- the rows ------------------------------------------------------------------------------


def test_rows_are_the_same_as_sqlites(pg_url: str, tmp_path: Path) -> None:
    events = [
        AttemptStarted(at=T0, call_id="call-1", model_id="primary", attempt=1),
        Failover(
            at=T0 + timedelta(seconds=1),
            call_id="call-1",
            from_model="a",
            to_model="b",
            reason=ErrorKind.SERVER,
        ),
        Maintenance(
            at=datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
            model_id="b",
            on=True,
            reason="50% off, \u00e9t\u00e9 \U0001f525",
            by="ops",
        ),
    ]
    columns = "SELECT seq, type, at, call_id, model_id, body FROM events ORDER BY seq"
    rows = []
    for store in (store_on(pg_url), SQLiteEventStore(tmp_path / "events.sqlite3")):
        for event in events:
            store.append(event)
        assert store.flush()
        rows.append(store.query(columns))
        store.close()
    assert rows[0] == rows[1]


def test_a_nul_character_round_trips(pg_url: str) -> None:
    store = store_on(pg_url, durability="buffered")
    event = AttemptStarted(at=T0, call_id="a\x00b", model_id="m\x00", attempt=1)
    store.append(event)
    assert [e.call_id for e in store.read() if isinstance(e, AttemptStarted)] == ["a\x00b"]
    assert store.errors == 0
    store.close()


def test_question_marks_and_percent_signs_in_queries(pg_url: str) -> None:
    assert to_psycopg("a = ? AND b LIKE '%?%' AND \"c?\" = ?") == (
        "a = %s AND b LIKE '%%?%%' AND \"c?\" = %s"
    )
    store = store_on(pg_url, durability="buffered")
    store.append(attempt("100% sure?"))
    store.append(attempt("other"))
    assert store.flush()
    assert store.query("SELECT seq FROM events WHERE call_id LIKE '%sure?'") == [(1,)]
    assert store.query("SELECT seq FROM events WHERE call_id LIKE ? || '%'", ("100%",)) == [(1,)]
    with pytest.raises(EventLogError, match="colour"):
        store.query("SELECT colour FROM events")
    store.close()


def test_the_cli_queries_give_the_same_answers_as_on_sqlite(pg_url: str, tmp_path: Path) -> None:
    events = [
        AttemptStarted(at=T0 + timedelta(seconds=n), call_id=f"c{n % 3}", model_id=m, attempt=n)
        for n, m in enumerate(["a", "b", "c"] * 4)
    ] + [
        Failover(
            at=T0 + timedelta(seconds=20),
            call_id="c1",
            from_model="a",
            to_model="b",
            reason=ErrorKind.SERVER,
        ),
        Failover(
            at=T0 + timedelta(seconds=21),
            call_id="c2",
            from_model="b",
            to_model="c",
            reason=ErrorKind.TIMEOUT,
        ),
    ]
    filters = [
        EventFilter(model_id="b"),
        EventFilter(model_id="c", types=("attempt_started", "failover")),
        EventFilter(call_id="c1", model_id="a"),
        EventFilter(types=("failover",)),
        EventFilter(since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=9)),
        EventFilter(since=T0 + timedelta(seconds=4), model_id="a", upto=10),
    ]
    answers = []
    for store in (store_on(pg_url), SQLiteEventStore(tmp_path / "events.sqlite3")):
        for event in events:
            store.append(event)
        assert store.flush()
        answers.append([[e.seq for e in read_events(store, flt)] for flt in filters])
        store.close()
    assert answers[0] == answers[1]
    assert answers[0][0] == [2, 5, 8, 11, 13, 14]  # b's attempts and both failovers


# -- concurrent writers --------------------------------------------------------------------


def test_writers_appending_at_once_get_unique_gap_free_seqs(pg_url: str) -> None:
    stores = [store_on(pg_url, durability="process", writer=f"w{n}") for n in range(4)]
    per_store = 500

    def write(store: PostgresEventStore) -> None:
        for n in range(1, per_store + 1):
            store.append(attempt(store.writer, n))
            if n % 25 == 0:
                assert store.flush()

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    events = list(stores[0].read())
    assert [e.seq for e in events] == list(range(1, 4 * per_store + 1))
    for store in stores:
        mine = [
            e.attempt for e in events if isinstance(e, AttemptStarted) and e.call_id == store.writer
        ]
        assert mine == list(range(1, per_store + 1))
        assert store.errors == 0
    by_writer = stores[0].query("SELECT writer, count(*) FROM events GROUP BY writer")
    assert sorted(by_writer) == [(f"w{n}", per_store) for n in range(4)]
    for store in stores:
        store.close()


# -- following other replicas --------------------------------------------------------------


def test_a_peers_commit_wakes_the_follower_without_polling(pg_url: str) -> None:
    store = store_on(pg_url, poll_interval=3600)  # only a notification can prompt a lookup
    peer = store_on(pg_url, durability="buffered")
    store.read_others(0)
    wait_until(lambda: store.listening)
    _, cursor = store.read_others(0)  # a lookup made while listening: from now on, cheap
    lookups = store.lookups
    for _ in range(50):
        assert store.read_others(cursor) == ([], cursor)
    assert store.lookups == lookups

    peer.append(attempt("theirs"))
    assert peer.flush()
    committed = time.monotonic()
    seen: list[Any] = []
    wait_until(lambda: bool(seen.extend(store.read_others(cursor)[0]) or seen))
    latency = time.monotonic() - committed
    assert [(e.call_id, e.seq) for e in seen] == [("theirs", 1)]
    assert store.lookups == lookups + 1
    print(f"a peer's event reached read_others {latency * 1000:.1f} ms after its commit")
    peer.close()
    store.close()


def test_own_commits_do_not_prompt_lookups(pg_url: str) -> None:
    store = store_on(pg_url, poll_interval=3600)
    store.read_others(0)
    wait_until(lambda: store.listening)
    _, cursor = store.read_others(0)
    lookups = store.lookups
    for n in range(5):
        store.append(attempt("mine", n))
        assert store.flush()
    assert store.read_others(cursor) == ([], cursor)
    assert store.lookups == lookups
    store.close()


def test_a_lost_notification_delays_events_by_the_poll_interval_at_most(pg_url: str) -> None:
    store = store_on(pg_url, poll_interval=0.2)
    store.read_others(0)
    wait_until(lambda: store.listening)
    _, cursor = store.read_others(0)
    with admin(pg_url) as conn:  # a writer that never notifies (an old version, a manual fix)
        conn.execute(
            "INSERT INTO failover.events (seq, type, at, writer, body) "
            "VALUES (1, 'engine_started', %s, 'manual', %s)",
            (at_micros(STARTED.at), compact(STARTED)[4].decode()),
        )
    calls = 0
    seen: list[Any] = []
    while not seen:
        calls += 1
        seen, cursor_now = store.read_others(cursor)
        assert calls < 10_000, "never seen"
        time.sleep(0.005)
    assert [e.seq for e in seen] == [1]
    assert cursor_now == 1
    assert store.lookups - 1 < calls  # the calls in between cost no query
    store.close()


def test_the_listener_reconnects_on_its_own(pg_url: str, log_records: list[dict[str, Any]]) -> None:
    store = store_on(pg_url, poll_interval=3600)
    peer = store_on(pg_url, durability="buffered")
    store.read_others(0)
    wait_until(lambda: store.listening)
    with admin(pg_url) as conn:
        (killed,) = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (f"failover-listen-{store.writer}",),
        ).fetchone()
    assert killed == 1
    wait_until(lambda: not store.listening)
    wait_until(lambda: store.listening)
    _, cursor = store.read_others(0)
    peer.append(attempt("theirs"))
    assert peer.flush()
    seen: list[Any] = []
    wait_until(lambda: bool(seen.extend(store.read_others(cursor)[0]) or seen))
    assert [e.call_id for e in seen] == ["theirs"]
    assert any("no notifications" in str(r["message"]) for r in log_records)
    peer.close()
    store.close()


def test_an_unclosed_follower_is_collected_and_its_threads_end(pg_url: str) -> None:
    before = set(threading.enumerate())
    held = [store_on(pg_url, poll_interval=3600)]
    held[0].append(attempt("mine"))
    held[0].read_others(0)  # starts the listener and the read pool
    wait_until(lambda: held[0].listening)
    threads = set(threading.enumerate()) - before
    assert any(t.name.startswith("failover-listen-") for t in threads)
    with pytest.warns(ResourceWarning, match="unclosed event log"):
        let_go(held, threads)
    assert [t.name for t in threads if t.is_alive()] == []


# -- the server goes away ------------------------------------------------------------------


async def test_events_buffer_while_the_server_is_down_and_land_after(
    pg_cluster: Cluster, pg_url: str, log_records: list[dict[str, Any]]
) -> None:
    store = store_on(pg_url, durability="process", connect_timeout=1)
    await store.wait_committed(store.append(attempt("before", 1)))
    with stopped(pg_cluster):
        for n in range(1, 21):
            with anyio.fail_after(GUARD):  # "calls" keep returning: nothing waits on the log
                await store.wait_committed(store.append(attempt("during", n)))
        assert store.errors >= 1
        with pytest.raises(EventLogError, match=r"127\.0\.0\.1"):
            store.count()
    await anyio.to_thread.run_sync(wait_until, lambda: store.flush(0.1))
    events = list(store.read())
    assert [e.seq for e in events] == list(range(1, 22))
    assert [e.call_id for e in events if isinstance(e, AttemptStarted)] == ["before"] + [
        "during"
    ] * 20
    assert store.dropped == 0
    errors = [str(r["message"]) for r in log_records if r["level"].name == "ERROR"]
    assert any("write failed" in line and store.url in line for line in errors)
    assert any("writable again" in str(r["message"]) for r in log_records)
    await store.aclose()


class CommitCutter:
    """A TCP proxy to the server that, once armed, lets a batch's COMMIT through and drops the
    server's answer with the connection: the batch is committed, the writer cannot know."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` through the proxy."""
        return database_url.replace(f":{self.port}/", f":{self.listener.getsockname()[1]}/")

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.port))
                committing = threading.Event()
                threading.Thread(target=self._up, args=(client, server, committing)).start()
                threading.Thread(target=self._down, args=(server, client, committing)).start()

    def _up(
        self, client: socket.socket, server: socket.socket, committing: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and b"; COMMIT" in data:
                    self.armed.clear()
                    committing.set()
                server.sendall(data)

    def _down(
        self, server: socket.socket, client: socket.socket, committing: threading.Event
    ) -> None:
        answer = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if committing.is_set():
                    answer += data
                    if b"Z\x00\x00\x00\x05" in answer:  # ReadyForQuery: the commit is done
                        break
                    continue
                client.sendall(data)
        for end in (client, server):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        if committing.is_set():
            self.cut.set()

    def close(self) -> None:
        self.listener.close()


def test_a_batch_whose_commit_answer_was_lost_is_not_written_twice(
    pg_cluster: Cluster, pg_url: str, log_records: list[dict[str, Any]]
) -> None:
    cutter = CommitCutter(pg_cluster.port)
    store = store_on(cutter.url(pg_url), durability="buffered")
    store.append(attempt("c", 1))
    assert store.flush()
    cutter.armed.set()
    for n in range(2, 6):
        store.append(attempt("c", n))
    wait_until(cutter.cut.is_set)
    wait_until(lambda: store.flush(0.1))
    assert store.errors == 1  # the lost answer, then no write again
    assert [(e.seq, e.attempt) for e in store.read() if isinstance(e, AttemptStarted)] == [
        (n, n) for n in range(1, 6)
    ]
    assert any("was committed" in str(r["message"]) for r in log_records)
    store.close()
    cutter.close()


def test_a_server_that_is_not_there_is_one_clear_error(pg_cluster: Cluster) -> None:
    url = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres"
    with stopped(pg_cluster), pytest.raises(EventLogError) as caught:
        PostgresEventStore(url, connect_timeout=1)
    message = str(caught.value)
    assert message.startswith(f"cannot connect to the PostgreSQL event log {url}")
    assert caught.value.__cause__ is None  # the driver's words, not its traceback


# -- passwords -----------------------------------------------------------------------------

ROLE = re.compile(r"//([a-z0-9_]+):[^@]*@")
PASSWORD = "s3cr3t:p@ss/w%rd"  # noqa: S105 - the test role's password


@pytest.fixture
def secret_url(pg_url: str) -> str:
    """The test database's URL for a role of its own that needs ``PASSWORD`` (URL-encoded)."""
    database = pg_url.rsplit("/", 1)[1]
    role = f"app_{database}"  # roles are per server, databases per test
    with admin(pg_url) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT ALL ON DATABASE {database} TO {role}")
    encoded = urllib.parse.quote(PASSWORD, safe="")
    return pg_url.replace("postgres@", f"{role}:{encoded}@")


def _leaks(text: str) -> bool:
    return PASSWORD in text or urllib.parse.quote(PASSWORD, safe="") in text


def test_the_password_is_never_shown(secret_url: str, log_records: list[dict[str, Any]]) -> None:
    store = store_on(secret_url, durability="buffered")
    assert store.url == masked_url(secret_url)
    assert f"{ROLE.search(secret_url)[1]}@127.0.0.1" in repr(store)
    store.append(attempt("c"))
    assert store.flush()
    role = ROLE.search(secret_url)[1]
    with admin(ROLE.sub("//postgres@", secret_url)) as conn:
        conn.execute(f"REVOKE INSERT ON failover.events FROM {role}")
        store.append(attempt("c", 2))
        wait_until(lambda: store.errors > 0)
        conn.execute(f"GRANT INSERT ON failover.events TO {role}")
    wait_until(lambda: store.flush(0.1))
    with pytest.raises(EventLogError) as caught:
        store.query("SELECT * FROM no_such_table")
    store.close()
    shown = [repr(store), store.url, store.location, str(store.last_error), str(caught.value)]
    shown += [str(r["message"]) for r in log_records]
    assert "permission denied" in str(store.last_error)
    assert not any(_leaks(text) for text in shown), shown


def test_a_wrong_password_is_one_clear_error_without_it(secret_url: str) -> None:
    wrong = secret_url.replace(urllib.parse.quote(PASSWORD, safe=""), "not-the-password")
    with pytest.raises(EventLogError, match="password authentication failed") as caught:
        store_on(wrong)
    assert "not-the-password" not in str(caught.value)
    assert f"{ROLE.search(secret_url)[1]}@127.0.0.1" in str(caught.value)


def test_a_password_given_apart_from_the_url(secret_url: str) -> None:
    bare = secret_url.replace(f":{urllib.parse.quote(PASSWORD, safe='')}@", "@")
    store = PostgresEventStore(bare, password=PASSWORD)
    store.append(attempt("c"))
    assert store.flush()
    assert store.count() == 1
    assert not _leaks(repr(store))
    store.close()
    with pytest.raises(EventLogError) as caught:
        PostgresEventStore(bare, password="wrong-" + PASSWORD)
    assert not _leaks(str(caught.value))


def test_an_unparsable_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(EventLogError, match="not a valid PostgreSQL URL") as caught:
        PostgresEventStore("host=db password=hunter2-secret junk")
    assert "hunter2" not in str(caught.value)


def test_a_replica_name_in_use_by_a_live_process_is_refused(pg_url: str) -> None:
    with PostgresEventStore(pg_url, writer="api-1") as first:
        with pytest.raises(EventLogError, match="replica name 'api-1' is in use"):
            PostgresEventStore(pg_url, writer="api-1")
        assert first.writer == "api-1"
    # Once the first one has closed (or died: its connection goes), the name is free again.
    with PostgresEventStore(pg_url, writer="api-1") as again:
        assert again.writer == "api-1"
