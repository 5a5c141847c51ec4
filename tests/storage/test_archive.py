"""Archiving a live log: nothing lost, totals unchanged, the archive an ordinary log, appending,
refusals, the cut's definition, crash safety at every write, short delete transactions, and the
space given back. On SQLite files and, where a server can run, on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devs.risks.multi_model_failover import replay
from devs.risks.multi_model_failover.core.errors import ErrorKind, EventLogError
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    StateChanged,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.projections import Snapshot, apply, fold
from devs.risks.multi_model_failover.storage import GroupCommitStore
from devs.risks.multi_model_failover.storage import archive as archiving
from devs.risks.multi_model_failover.storage.archive import (
    ArchiveError,
    archive,
    cut_of,
    read_rows,
    records,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

T0 = datetime(2024, 5, 1, tzinfo=UTC)
STEP = timedelta(minutes=1)
WRITERS = ("replica-a", "replica-b")


def history(count: int, start: datetime = T0) -> list[Event]:
    """``count`` events a minute apart, of every kind the fold counts, with text that is not
    plain ASCII."""
    events: list[Event] = [EngineStarted(at=start, models=("a", "b"))]
    for n in range(1, count):
        at = start + n * STEP
        call = f"call-{n // 6}"
        match n % 6:
            case 0:
                events.append(CallStarted(at=at, call_id=call, order=("a", "b")))
            case 1:
                events.append(AttemptStarted(at=at, call_id=call, model_id="a", attempt=1))
            case 2:
                events.append(
                    AttemptFailed(
                        at=at,
                        call_id=call,
                        model_id="a",
                        attempt=1,
                        latency=0.25,
                        error_kind=ErrorKind.SERVER,
                        message='503 « épuisé » "quoted" \u2028',
                        final=True,
                    )
                )
            case 3:
                events.append(
                    Failover(
                        at=at, call_id=call, from_model="a", to_model="b", reason=ErrorKind.SERVER
                    )
                )
            case 4:
                events.append(
                    CallSucceeded(
                        at=at, call_id=call, model_id="b", attempts=2, failovers=1, latency=0.5
                    )
                )
            case _:
                events.append(_health(at, n))
    return events[:count]


def _health(at: datetime, n: int) -> Event:
    # State changes and maintenance are rare, as in a real log (each one stays in the
    # snapshots' audit trail).
    if n % 48 == 5:
        return StateChanged(
            at=at,
            model_id="a",
            from_state=HealthState.HEALTHY,
            to_state=HealthState.DEGRADED,
            reason="failures",
        )
    if n % 48 == 11:
        return Maintenance(at=at, model_id="b", on=n % 96 == 11, reason="rotation", by="alice")
    return HealthProbe(at=at, model_id="a", ok=n % 3 == 0, latency=0.01)


# -- the logs under test -----------------------------------------------------------------------

Opener = Callable[..., GroupCommitStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the live log under test (the same one each time) with a writer name."""
    opened: list[GroupCommitStore] = []
    if request.param == "sqlite":
        path = tmp_path / "live.sqlite3"

        def make(writer: str = "reader", **options: Any) -> GroupCommitStore:
            store = SQLiteEventStore(path, writer=writer, **options)
            opened.append(store)
            return store

    else:
        pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
        url = request.getfixturevalue("pg_url")

        def make(writer: str = "reader", **options: Any) -> GroupCommitStore:
            from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
                PostgresEventStore,
            )

            options.setdefault("lock_timeout", 10.0)
            store = PostgresEventStore(url, writer=writer, **options)
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


def write(open_log: Opener, events: list[Event]) -> None:
    """Append ``events`` in order, alternating between two writers in runs of seven."""
    stores = [open_log(name) for name in WRITERS]
    for start in range(0, len(events), 7):
        store = stores[(start // 7) % 2]
        for event in events[start : start + 7]:
            store.append(event)
        assert store.flush()
    for store in stores:
        store.close()


def everything(store: GroupCommitStore) -> list[tuple[Event, str]]:
    return read_rows(store, after=0, upto=store.last_seq())


def archived(path: Path) -> list[tuple[Event, str]]:
    with SQLiteEventStore(path, create=False) as log:
        return everything(log)


def same_totals(left: Snapshot, right: Snapshot) -> bool:
    return msgspec.to_builtins(left) == msgspec.to_builtins(right)


@pytest.fixture
def live(open_log: Opener) -> GroupCommitStore:
    """A live log of 120 events, one a minute from T0, by two writers."""
    write(open_log, history(120))
    return open_log()


BEFORE = T0 + 50 * STEP  # events 1..50 (at T0 .. T0+49 min) are older


# -- nothing lost, nothing changed --------------------------------------------------------------


def test_every_event_is_in_the_archive_or_the_live_log_with_its_seq_writer_and_content(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    before = everything(live)
    assert {writer for _, writer in before} == set(WRITERS)

    result = archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")

    moved = archived(tmp_path / "old.sqlite3")
    kept = everything(live)
    assert moved + kept == before
    assert [e.seq for e, _ in moved] == list(range(1, 51))
    assert all(e.at < BEFORE for e, _ in moved)
    assert (result.moved, result.copied, result.first_seq, result.last_seq) == (50, 50, 1, 50)
    assert result.cut == cut_of(live) == 50
    assert result.complete
    assert result.seconds >= 0


def test_totals_states_and_replay_stay_what_they_were(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    whole = fold(e for e, _ in everything(live))

    archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")

    assert same_totals(live.snapshots.load()[0], whole)
    assert same_totals(replay(live), whole)
    # The archive replays to the log as it was at its last event.
    up_to_cut = fold(e for e, _ in archived(tmp_path / "old.sqlite3"))
    assert same_totals(replay(tmp_path / "old.sqlite3"), up_to_cut)


def test_the_archive_is_an_ordinary_private_event_log(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    target = tmp_path / "old.sqlite3"
    archive(live, before=BEFORE, to=target)

    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with SQLiteEventStore(target, create=False) as log:
        assert log.count() == 50
        assert [e.seq for e in log.read()] == list(range(1, 51))


def test_the_archive_is_recorded_in_the_live_log(live: GroupCommitStore, tmp_path: Path) -> None:
    archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")

    (found,) = records(live)
    assert found.path == str((tmp_path / "old.sqlite3").absolute())
    assert (found.first_seq, found.last_seq) == (1, 50)
    assert (found.first_at, found.last_at) == (T0, T0 + 49 * STEP)
    assert found.archived_at.tzinfo is not None


def test_new_events_continue_the_seqs_after_everything_was_archived(
    open_log: Opener, tmp_path: Path
) -> None:
    write(open_log, history(30))
    live = open_log()
    archive(live, before=T0 + 1000 * STEP, to=tmp_path / "all.sqlite3")
    assert live.count() == 0

    writer = open_log("later")
    writer.append(HealthProbe(at=T0 + 2000 * STEP, model_id="a", ok=True, latency=0.1))
    assert writer.flush()
    assert [e.seq for e in live.read()] == [31]


# -- appending -----------------------------------------------------------------------------------


def test_archiving_again_into_the_same_file_continues_it(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    before = everything(live)
    target = tmp_path / "old.sqlite3"
    archive(live, before=T0 + 30 * STEP, to=target)
    second = archive(live, before=T0 + 80 * STEP, to=target)

    assert (second.first_seq, second.last_seq, second.copied) == (31, 80, 50)
    assert archived(target) + everything(live) == before
    assert [(r.first_seq, r.last_seq) for r in records(live)] == [(1, 30), (31, 80)]
    assert same_totals(replay(target), fold(e for e, _ in before[:80]))


def test_a_second_archive_file_starts_from_a_snapshot_of_what_came_before(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    before = everything(live)
    archive(live, before=T0 + 30 * STEP, to=tmp_path / "one.sqlite3")
    archive(live, before=T0 + 80 * STEP, to=tmp_path / "two.sqlite3")

    assert archived(tmp_path / "one.sqlite3") + archived(tmp_path / "two.sqlite3") == before[:80]
    # Replaying the second archive alone gives the totals of everything up to its end.
    assert same_totals(replay(tmp_path / "two.sqlite3"), fold(e for e, _ in before[:80]))
    assert same_totals(replay(live), fold(e for e, _ in before))


def test_nothing_to_move_creates_no_file(live: GroupCommitStore, tmp_path: Path) -> None:
    result = archive(live, before=T0, to=tmp_path / "none.sqlite3")

    assert (result.moved, result.copied, result.first_seq, result.cut) == (0, 0, None, 0)
    assert not (tmp_path / "none.sqlite3").exists()
    assert live.count() == 120


# -- refusals ------------------------------------------------------------------------------------


def test_a_file_that_is_not_an_event_log_is_refused_untouched(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but a long enough text to be read as one\n" * 20)
    foreign = tmp_path / "someone.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn, conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    foreign_bytes = foreign.read_bytes()

    for target, why in ((text, "not an SQLite database"), (foreign, "not a failover event log")):
        with pytest.raises(ArchiveError, match=why):
            archive(live, before=BEFORE, to=target)
    assert foreign.read_bytes() == foreign_bytes
    assert live.count() == 120
    assert records(live) == []


def test_a_missing_folder_is_refused_and_not_created(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    with pytest.raises(ArchiveError, match=r"folder .*missing.* does not exist"):
        archive(live, before=BEFORE, to=tmp_path / "missing" / "old.sqlite3")
    assert not (tmp_path / "missing").exists()


def test_an_event_log_that_is_no_archive_is_refused(live: GroupCommitStore, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with SQLiteEventStore(other) as log:
        log.append(HealthProbe(at=T0, model_id="z", ok=True, latency=0.0))

    with pytest.raises(ArchiveError, match="an event log, not an archive"):
        archive(live, before=BEFORE, to=other)
    assert live.count() == 120


def test_the_archive_of_another_log_is_refused(live: GroupCommitStore, tmp_path: Path) -> None:
    with SQLiteEventStore(tmp_path / "elsewhere.sqlite3") as other:
        for event in history(60):
            other.append(event)
    with SQLiteEventStore(tmp_path / "elsewhere.sqlite3") as other:
        archive(other, before=BEFORE, to=tmp_path / "theirs.sqlite3")

    with pytest.raises(ArchiveError, match="archive of another log"):
        archive(live, before=BEFORE, to=tmp_path / "theirs.sqlite3")
    assert live.count() == 120


def test_an_archive_that_would_leave_a_gap_is_refused(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    one, two = tmp_path / "one.sqlite3", tmp_path / "two.sqlite3"
    archive(live, before=T0 + 30 * STEP, to=one)
    archive(live, before=T0 + 60 * STEP, to=two)

    with pytest.raises(ArchiveError, match=r"ends at seq 30.*starts at seq 61.*two\.sqlite3"):
        archive(live, before=T0 + 90 * STEP, to=one)
    assert live.count() == 60


def test_the_log_itself_is_refused_as_its_archive(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    with SQLiteEventStore(path) as live:
        for event in history(20):
            live.append(event)
        assert live.flush()
        with pytest.raises(ArchiveError, match="into itself"):
            archive(live, before=BEFORE, to=path)
        assert live.count() == 20


def test_a_row_this_version_cannot_read_stops_the_archive_before_anything_is_deleted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.sqlite3"
    with SQLiteEventStore(path) as live:
        for event in history(60):
            live.append(event)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE events SET type = 'from_the_future' WHERE seq = 10")

    with SQLiteEventStore(path) as live, pytest.raises(EventLogError, match="seq=10"):
        archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")
    with SQLiteEventStore(path) as live:
        assert live.count() == 60
        assert records(live) == []


# -- the cut ---------------------------------------------------------------------------------------


def test_the_cut_stops_at_the_first_event_at_or_after_before(
    open_log: Opener, tmp_path: Path
) -> None:
    # Writers stamp events before they commit: seq 6 is newer than ``before``, seq 7 older.
    events = history(10)
    events[5] = msgspec.structs.replace(events[5], at=T0 + 100 * STEP)
    events[6] = msgspec.structs.replace(events[6], at=T0 + 2 * STEP)
    write(open_log, events)
    live = open_log()

    result = archive(live, before=T0 + 8 * STEP, to=tmp_path / "old.sqlite3")

    assert result.last_seq == 5
    assert all(e.at < T0 + 8 * STEP for e, _ in archived(tmp_path / "old.sqlite3"))
    assert [e.seq for e in live.read()] == [6, 7, 8, 9, 10]


# -- crashes ---------------------------------------------------------------------------------------


class Crash(Exception):
    """The process dying just before a write commits."""


def crash_before_write(monkeypatch: pytest.MonkeyPatch, store_type: type, nth: int) -> list[int]:
    """Make the ``nth`` write transaction (of any store of ``store_type``, or a slice that
    SQLite copies file to file) fail before it commits; returns the running count of writes."""
    seen = [0]
    original = store_type.transaction
    copy_rows = archiving._copy_rows

    def transaction(self: Any, statements: Any) -> None:
        seen[0] += 1
        if seen[0] == nth:
            raise Crash(f"write {nth}")
        original(self, statements)

    def copy(conn: sqlite3.Connection, after: int, high: int, expected: int) -> int:
        seen[0] += 1
        if seen[0] == nth:
            raise Crash(f"write {nth} (a copied slice)")
        return copy_rows(conn, after, high, expected)

    monkeypatch.setattr(store_type, "transaction", transaction)
    monkeypatch.setattr(archiving, "_copy_rows", copy)
    return seen


def count_writes(live: GroupCommitStore, tmp_path: Path) -> int:
    with pytest.MonkeyPatch.context() as patch:
        seen = crash_before_write(patch, SQLiteEventStore, 0)
        archive(live, before=BEFORE, to=tmp_path / "count.sqlite3")
    return seen[0]


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archiving, "COPY_SLICE", 13)
    monkeypatch.setattr(archiving, "DELETE_SLICE", 11)


@pytest.mark.usefixtures("small_slices")
def test_a_crash_before_any_write_loses_nothing_and_a_rerun_duplicates_nothing(
    tmp_path: Path,
) -> None:
    with SQLiteEventStore(tmp_path / "probe.sqlite3") as probe:
        for event in history(120):
            probe.append(event)
    with SQLiteEventStore(tmp_path / "probe.sqlite3") as probe:
        writes = count_writes(probe, tmp_path)
    assert writes > 10

    for nth in range(1, writes + 1):
        folder = tmp_path / f"crash-{nth}"
        folder.mkdir()
        path, target = folder / "live.sqlite3", folder / "old.sqlite3"
        with SQLiteEventStore(path, writer="replica-a") as log:
            for event in history(120):
                log.append(event)
        with SQLiteEventStore(path) as live:
            before = everything(live)
            whole = fold(e for e, _ in before)
            with pytest.MonkeyPatch.context() as patch:
                crash_before_write(patch, SQLiteEventStore, nth)
                with pytest.raises(Crash):
                    archive(live, before=BEFORE, to=target)
            # Between the crash and the rerun: every event is somewhere.
            held = everything(live) + (archived(target) if target.exists() else [])
            assert {e.seq for e, _ in held} == {e.seq for e, _ in before}, f"crash {nth}"

            archive(live, before=BEFORE, to=target)

            assert archived(target) + everything(live) == before, f"crash {nth}"
            assert [(r.first_seq, r.last_seq) for r in records(live)] == [(1, 50)], nth
            assert same_totals(live.snapshots.load()[0], whole), f"crash {nth}"


def test_a_range_recorded_before_a_crash_is_completed_whatever_the_next_target(
    live: GroupCommitStore, tmp_path: Path
) -> None:
    before = everything(live)
    original = type(live).transaction

    def no_cut(self: Any, statements: Any) -> None:
        if self is live and any("INTO snapshots" in sql and "cut" in p for sql, p in statements):
            raise Crash("before the cut snapshot")
        original(self, statements)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(live), "transaction", no_cut)
        with pytest.raises(Crash):
            archive(live, before=BEFORE, to=tmp_path / "first.sqlite3")
    assert [(r.first_seq, r.last_seq) for r in records(live)] == [(1, 50)]

    result = archive(live, before=BEFORE, to=tmp_path / "second.sqlite3")

    assert result.moved == 50
    assert not (tmp_path / "second.sqlite3").exists()
    assert archived(tmp_path / "first.sqlite3") + everything(live) == before
    assert same_totals(replay(live), fold(e for e, _ in before))


_KILLER = textwrap.dedent(
    """
    import os, sys
    from datetime import datetime
    from devs.risks.multi_model_failover.storage import archive as archiving
    from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

    live, target, before, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    archiving.COPY_SLICE = archiving.DELETE_SLICE = 7
    original = SQLiteEventStore.transaction
    seen = [0]

    def transaction(self, statements):
        seen[0] += 1
        if seen[0] == nth:
            # Half the statements run, then the process dies inside the transaction.
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements[: max(1, len(statements) // 2)]:
                conn.execute(sql, tuple(params))
            os._exit(9)
        original(self, statements)

    def copy_rows(conn, after, high, expected):
        seen[0] += 1
        if seen[0] == nth:
            # The slice's rows are written into the archive, then the process dies.
            conn.execute("BEGIN")
            conn.execute(archiving._COPY_WRITERS, (after, high))
            conn.execute(archiving._COPY_SLICE_SQL, (after, high))
            os._exit(9)
        return original_copy(conn, after, high, expected)

    SQLiteEventStore.transaction = transaction
    original_copy = archiving._copy_rows
    archiving._copy_rows = copy_rows
    store = SQLiteEventStore(live)
    archiving.archive(store, before=datetime.fromisoformat(before), to=target)
    os._exit(0)
    """
)


@pytest.mark.parametrize("nth", [3, 15])  # in the copy (a slice); in the deletes
def test_a_process_killed_inside_a_write_loses_nothing(tmp_path: Path, nth: int) -> None:
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    with SQLiteEventStore(path, writer="replica-a") as log:
        for event in history(120):
            log.append(event)
    with SQLiteEventStore(path) as live:
        before = everything(live)

    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, "-c", _KILLER, str(path), str(target), BEFORE.isoformat(), str(nth)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9, done.stderr

    with SQLiteEventStore(path) as live:
        archive(live, before=BEFORE, to=target)
        assert archived(target) + everything(live) == before


def test_stop_ends_a_run_early_and_the_next_run_completes_it(
    live: GroupCommitStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archiving, "COPY_SLICE", 10)
    before = everything(live)
    asked = [0]

    def stop() -> bool:
        asked[0] += 1
        return asked[0] >= 2

    first = archive(live, before=BEFORE, to=tmp_path / "old.sqlite3", stop=stop)
    assert not first.complete
    assert first.copied < 50

    second = archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")
    assert second.complete
    assert first.copied + second.copied == 50
    assert archived(tmp_path / "old.sqlite3") + everything(live) == before


# -- writers meanwhile, and space ------------------------------------------------------------------


def test_writers_appending_meanwhile_never_wait_out_their_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    with SQLiteEventStore(path, batch_size=50_000) as log:
        for event in history(30_000):
            log.append(event)
    stop = threading.Event()
    appender = SQLiteEventStore(path, writer="engine", lock_timeout=0.5)
    appended = [0]

    def append() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            appender.append(
                HealthProbe(at=T0 + (40_000 + n) * STEP, model_id="a", ok=True, latency=0)
            )
            appended[0] = n
            time.sleep(0.001)

    thread = threading.Thread(target=append)
    thread.start()
    try:
        with SQLiteEventStore(path) as live:
            result = archive(live, before=T0 + 29_000 * STEP, to=tmp_path / "old.sqlite3")
    finally:
        stop.set()
        thread.join()
    assert appender.flush()
    appender.close()
    assert appender.errors == 0, appender.last_error
    assert result.moved == 29_000
    with SQLiteEventStore(path) as live:
        assert live.count() == 1_000 + appended[0]


def test_the_live_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    with SQLiteEventStore(path, batch_size=50_000) as log:
        for event in history(20_000):
            log.append(event)
    with SQLiteEventStore(path) as live:
        result = archive(live, before=T0 + 19_000 * STEP, to=tmp_path / "old.sqlite3")

    assert result.size_before is not None
    assert result.size_after is not None
    assert result.size_after < result.size_before / 4
    assert result.space == "incremental_vacuum"
    assert os.path.getsize(path) == result.size_after


def test_a_log_without_incremental_vacuum_is_rewritten_once_and_then_has_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.sqlite3"
    with SQLiteEventStore(path, batch_size=50_000) as log:
        for event in history(20_000):
            log.append(event)
    with (
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn,
        conn,
    ):  # as a log made before
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    with SQLiteEventStore(path) as live:
        result = archive(live, before=T0 + 19_000 * STEP, to=tmp_path / "old.sqlite3")
        assert result.space.startswith("VACUUM")
        assert result.size_after is not None
        assert result.size_before is not None
        assert result.size_after < result.size_before / 4
        assert live.query("PRAGMA auto_vacuum") == [(2,)]


def test_postgres_makes_the_space_reusable(pg_url: str, tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
        PostgresEventStore,
    )

    with PostgresEventStore(pg_url) as log:
        for event in history(3_000):
            log.append(event)
    with PostgresEventStore(pg_url) as live:
        result = archive(live, before=T0 + 2_900 * STEP, to=tmp_path / "old.sqlite3")
        assert result.space.startswith("VACUUM")
        assert result.size_before is not None
        for event in history(2_900, start=T0 + 3_000 * STEP):
            live.append(event)
        assert live.flush()
        # The new events took the place of the archived ones: the table did not grow.
        after_refill = archiving.log_size(live)
    assert after_refill is not None
    assert after_refill < result.size_before * 1.3


@pytest.mark.slow
def test_archiving_a_big_log(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    count = 300_000
    with SQLiteEventStore(path, batch_size=50_000) as log:
        for event in history(count):
            log.append(event)
    with SQLiteEventStore(path) as live:
        whole = live.snapshots.load()[0]
        result = archive(live, before=T0 + (count - 1_000) * STEP, to=tmp_path / "old.sqlite3")
        assert same_totals(live.snapshots.load()[0], whole)
    assert result.moved == count - 1_000
    assert result.size_after is not None
    assert result.size_before is not None
    assert result.size_after < result.size_before / 20


# -- the archive's own snapshots, and a copy that spares the event loop ----------------------------


def archive_snapshots(path: Path) -> dict[int, str]:
    with SQLiteEventStore(path, create=False) as log:
        return {int(c): str(k) for c, k in log.query("SELECT cursor, kind FROM snapshots")}


def test_the_archive_gets_a_snapshot_every_n_copied_events_each_the_fold_up_to_it(
    open_log: Opener, tmp_path: Path
) -> None:
    events = history(120)
    write(open_log, events)
    live = open_log(snapshot_every=20)
    target = tmp_path / "old.sqlite3"

    archive(live, before=T0 + 95 * STEP, to=target)

    found = archive_snapshots(target)
    assert found == {20: "archive", 40: "archive", 60: "archive", 80: "archive", 95: "archive"}
    with SQLiteEventStore(target, create=False) as log:
        for cursor in (20, 40, 60, 80):
            body = log.query("SELECT body FROM snapshots WHERE cursor = ?", (cursor,))[0][0]
            stored = msgspec.msgpack.decode(body, type=Snapshot)
            assert same_totals(stored, fold(events[:cursor])), cursor


def test_a_continued_archive_keeps_its_snapshots_and_adds_those_of_the_new_events(
    open_log: Opener, tmp_path: Path
) -> None:
    events = history(120)
    write(open_log, events)
    live = open_log(snapshot_every=20)
    target = tmp_path / "old.sqlite3"
    archive(live, before=T0 + 30 * STEP, to=target)
    archive(live, before=T0 + 90 * STEP, to=target)

    found = archive_snapshots(target)
    assert {c for c, k in found.items() if k == "archive"} == {20, 30, 40, 60, 80, 90}
    # Saving another snapshot in the archive prunes none of them.
    with SQLiteEventStore(target, create=False) as log:
        log.snapshots.save(fold(events[:90]), 90, "close")
    assert set(archive_snapshots(target)) == {20, 30, 40, 60, 80, 90}
    assert same_totals(replay(target), fold(events[:90]))


@pytest.mark.usefixtures("small_slices")
def test_a_run_stopped_between_slices_leaves_no_snapshot_out_once_completed(
    tmp_path: Path,
) -> None:
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    with SQLiteEventStore(path, snapshot_every=20) as log:
        for event in history(120):
            log.append(event)
    with SQLiteEventStore(path, snapshot_every=20) as live:
        asked = [0]

        def stop() -> bool:
            asked[0] += 1
            return asked[0] >= 3

        first = archive(live, before=BEFORE, to=target, stop=stop)
        assert not first.complete
        archive(live, before=BEFORE, to=target)
    assert {c for c, k in archive_snapshots(target).items() if k == "archive"} == {20, 40, 50}


def test_the_sqlite_copy_keeps_no_list_of_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What stalled the event loop: whole slices of events decoded into lists (long C calls
    holding the GIL, and objects that live long enough to reach the old generations of the
    garbage collector). SQLite now copies the rows itself; the fold reads them one at a time.
    Measured here: a peak of 6.6 MB of Python allocations before, 0.9 MB after."""
    import tracemalloc  # noqa: PLC0415 - this test only

    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(50_000)
    with SQLiteEventStore(path, batch_size=50_000) as log:
        for event in events:
            log.append(event)

    with SQLiteEventStore(path) as live:
        before = everything(live)

    def no_list(*args: object, **kwargs: object) -> list[tuple[Event, str]]:
        raise AssertionError("the SQLite path read a slice of events into a list")

    monkeypatch.setattr(archiving, "read_rows", no_list)
    with SQLiteEventStore(path) as live:
        tracemalloc.start()
        try:
            result = archive(live, before=T0 + 49_000 * STEP, to=target)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert same_totals(live.snapshots.load()[0], fold(events))
    assert result.moved == 49_000
    assert peak < 2_500_000, f"{peak:,} bytes"
    monkeypatch.undo()
    assert archived(target) == before[:49_000]


def test_the_sqlite_copy_is_byte_for_byte(open_log: Opener, tmp_path: Path) -> None:
    write(open_log, history(120))
    live = open_log()
    if not isinstance(live, SQLiteEventStore):
        pytest.skip("the rows of a PostgreSQL log are rewritten in the archive's format")
    columns = "seq, type, at, call_id, model_id, body"
    rows = live.query(f"SELECT {columns} FROM events WHERE seq <= 50 ORDER BY seq")  # noqa: S608

    archive(live, before=BEFORE, to=tmp_path / "old.sqlite3")

    with SQLiteEventStore(tmp_path / "old.sqlite3", create=False) as log:
        assert log.query(f"SELECT {columns} FROM events ORDER BY seq") == rows  # noqa: S608


# -- the live log's snapshots stand in for the fold ------------------------------------------------

EVERY = 100


def periodic_snapshots(store: GroupCommitStore, events: list[Event], cursors: range) -> None:
    """The live log's periodic snapshots at ``cursors``, as a store taking one every ``EVERY``
    events leaves them (saved by hand: when the snapshot thread runs is not the point)."""
    for cursor in cursors:
        store.snapshots.save(fold(events[:cursor]), cursor, "periodic")


def counting_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events the archive folds from now on."""
    counted = [0]

    def counting(snap: Snapshot, event: Event) -> None:
        counted[0] += 1
        apply(snap, event)

    monkeypatch.setattr(archiving, "apply", counting)
    return counted


def archived_snapshot(path: Path, cursor: int) -> Snapshot:
    with SQLiteEventStore(path, create=False) as log:
        body = log.query("SELECT body FROM snapshots WHERE cursor = ?", (cursor,))[0][0]
    return msgspec.msgpack.decode(body, type=Snapshot)


def test_the_archive_copies_the_live_snapshots_and_folds_only_what_follows_the_last(
    open_log: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's Python work (what can hold up the event loop) no longer grows with the
    range archived: the live log's periodic snapshots stand in for the fold."""
    events = history(1_000)
    write(open_log, events)
    live = open_log(snapshot_every=EVERY)
    periodic_snapshots(live, events, range(EVERY, 1_000, EVERY))
    whole, before = live.snapshots.load()[0], everything(live)
    folded = counting_folds(monkeypatch)
    target = tmp_path / "old.sqlite3"

    result = archive(live, before=T0 + 950 * STEP, to=target)

    assert result.moved == 950
    assert folded[0] == 50, "only the events after the last snapshot (900) are folded"
    assert archived(target) + everything(live) == before
    assert same_totals(live.snapshots.load()[0], whole)
    assert same_totals(replay(target), fold(events[:950]))
    kept = archive_snapshots(target)
    assert {c for c, k in kept.items() if k == "archive"} == {*range(EVERY, 1_000, EVERY), 950}
    for cursor in range(EVERY, 1_000, EVERY):
        assert same_totals(archived_snapshot(target, cursor), fold(events[:cursor])), cursor
    assert live.snapshots.within(0, 950) == [], "moved out with their events"


def test_a_snapshot_the_archive_cannot_trust_is_folded_over(
    open_log: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = history(1_000)
    write(open_log, events)
    live = open_log(snapshot_every=EVERY)
    periodic_snapshots(live, events, range(EVERY, 1_000, EVERY))
    live.transaction(
        [
            ("UPDATE snapshots SET body = ? WHERE cursor = 500", (b"not msgpack",)),
            ("UPDATE snapshots SET fold = '0-0123456789ab' WHERE cursor = 700", ()),
        ]
    )
    whole, before = live.snapshots.load()[0], everything(live)
    folded = counting_folds(monkeypatch)
    target = tmp_path / "old.sqlite3"

    archive(live, before=T0 + 950 * STEP, to=target)

    # 401..500 (its snapshot does not decode) and 901..950; the one at 700 is another fold's,
    # so the stretch 601..800 ends at 800's.
    assert folded[0] == 150
    assert archived(target) + everything(live) == before
    assert same_totals(live.snapshots.load()[0], whole)
    kept = {c for c, k in archive_snapshots(target).items() if k == "archive"}
    assert kept == {100, 200, 300, 400, 500, 600, 800, 900, 950}
    for cursor in sorted(kept):
        assert same_totals(archived_snapshot(target, cursor), fold(events[:cursor])), cursor


def test_a_live_snapshot_that_lies_is_copied_and_verify_on_the_archive_says_so(
    open_log: Opener, tmp_path: Path
) -> None:
    """The archive trusts the live log's snapshots as an engine's start-up does (this
    version's fold wrote them); ``failover verify`` on the archive finds one that lies."""
    events = history(1_000)
    write(open_log, events)
    live = open_log(snapshot_every=EVERY)
    periodic_snapshots(live, events, range(EVERY, 1_000, EVERY))
    lie = fold(events[:600])
    lie.events += 1_000
    live.transaction(
        [
            (
                "UPDATE snapshots SET body = ? WHERE cursor = 600",
                (msgspec.msgpack.encode(lie),),
            )
        ]
    )
    assert not live.snapshots.verify().ok
    target = tmp_path / "old.sqlite3"

    archive(live, before=T0 + 950 * STEP, to=target)

    with SQLiteEventStore(target, create=False) as log:
        check = log.snapshots.verify()
    assert not check.ok
    assert any("seq 600" in problem for problem in check.problems)


@pytest.mark.usefixtures("small_slices")
def test_a_run_stopped_between_slices_of_unread_stretches_completes_without_a_copy_twice(
    open_log: Opener, tmp_path: Path
) -> None:
    events = history(1_000)
    write(open_log, events)
    live = open_log(snapshot_every=EVERY)
    periodic_snapshots(live, events, range(EVERY, 1_000, EVERY))
    before = everything(live)
    target = tmp_path / "old.sqlite3"
    asked = [0]

    def stop() -> bool:
        asked[0] += 1
        return asked[0] in (5, 30)  # inside the stretch to 100, then to 300

    assert not archive(live, before=T0 + 950 * STEP, to=target, stop=stop).complete
    assert not archive(live, before=T0 + 950 * STEP, to=target, stop=stop).complete
    assert archive(live, before=T0 + 950 * STEP, to=target).complete

    assert archived(target) + everything(live) == before
    kept = {c for c, k in archive_snapshots(target).items() if k == "archive"}
    assert kept == {*range(EVERY, 1_000, EVERY), 950}
    assert same_totals(replay(target), fold(events[:950]))


def test_a_row_this_version_cannot_read_in_an_unread_stretch_moves_intact(
    tmp_path: Path,
) -> None:
    """A newer version's event, which this version's folds (and so its snapshots) skip: the
    rows up to a snapshot are copied byte for byte, so it reaches the archive as it was,
    for the version that wrote it. (In a stretch that is folded, it stops the archive.)"""
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(1_000)
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        for event in events:
            live.append(event)
        assert live.flush()
        periodic_snapshots(live, events, range(EVERY, 1_000, EVERY))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE events SET type = 'from_the_future' WHERE seq = 150")
        row = conn.execute("SELECT type, at, body FROM events WHERE seq = 150").fetchone()

    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        assert archive(live, before=T0 + 950 * STEP, to=target).complete
    with contextlib.closing(sqlite3.connect(target)) as conn:
        assert conn.execute("SELECT type, at, body FROM events WHERE seq = 150").fetchone() == row
