"""Hostile tests of the anchors (commit 3128771): a live log keeps a periodic snapshot per
``snapshot_every`` events, and an archive copies the events up to each of them unread, folding
only what follows the last one.

The first four failed on the code they were written against (each docstring says what broke);
the others guard what held up under attack.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests.storage.test_archive import STEP, T0, archived, everything, history, same_totals
from typer.testing import CliRunner

from devs.risks.multi_model_failover import replay
from devs.risks.multi_model_failover.adapters.cli.commands import app
from devs.risks.multi_model_failover.adapters.retention import Retention, archive_round
from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.core.projections import Snapshot, apply, fold
from devs.risks.multi_model_failover.storage import GroupCommitStore
from devs.risks.multi_model_failover.storage import archive as archiving
from devs.risks.multi_model_failover.storage.archive import archive, records
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

EVERY = 20
Opener = Callable[..., GroupCommitStore]


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """The live log under test (the same one each time), as tests/storage/test_archive.py."""
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


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archiving, "COPY_SLICE", 13)
    monkeypatch.setattr(archiving, "DELETE_SLICE", 11)


def anchored_log(path: Path, events: list[Event], cursors: range, every: int = EVERY) -> None:
    """A file log holding ``events`` and this version's periodic snapshots at ``cursors``."""
    with SQLiteEventStore(path, snapshot_every=None) as log:
        for event in events:
            log.append(event)
        assert log.flush()
        for cursor in cursors:
            log.snapshots.save(fold(events[:cursor]), cursor, "periodic")


def snapshot_rows(store: GroupCommitStore) -> list[tuple[int, str]]:
    return [(int(c), str(k)) for c, k in store.query("SELECT cursor, kind FROM snapshots")]


def archive_rows(path: Path) -> list[tuple[int, str]]:
    with SQLiteEventStore(path, create=False) as log:
        return sorted(snapshot_rows(log))


def archive_verifies(path: Path) -> bool:
    with SQLiteEventStore(path, create=False) as log:
        return log.snapshots.verify().ok


def counting_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events the archive folds from now on."""
    counted = [0]

    def counting(snap: Snapshot, event: Event) -> None:
        counted[0] += 1
        apply(snap, event)

    monkeypatch.setattr(archiving, "apply", counting)
    return counted


def newer_body(seq: int) -> str:
    """The stored form of an event of a type a newer version of the library writes."""
    return f'{{"seq":{seq},"type":"from_the_future","at":"2024-05-01T00:00:00+00:00"}}'


def make_newer(path: Path, seqs: list[int]) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for seq in seqs:
            conn.execute(
                "UPDATE events SET type = 'from_the_future', body = ? WHERE seq = ?",
                (newer_body(seq), seq),
            )


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    sql = "SELECT seq, type, at, call_id, model_id, body FROM events ORDER BY seq"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


# -- found broken, then mended ----------------------------------------------------------------


def test_an_anchor_at_a_cut_stays_in_an_archive_continued_twice(tmp_path: Path) -> None:
    """An archive's snapshots are never pruned. Broken: a run's end snapshot was a ``close``
    one, which replaced an anchor at the same cursor, and an archive kept only its two latest
    ``close`` snapshots, so two more runs into the file deleted it. Now of kind ``archive``."""
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(400)
    anchored_log(path, events, range(EVERY, 400, EVERY))
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        archive(live, before=T0 + 100 * STEP, to=target)  # cut at 100: an anchor
        after_first = {cursor for cursor, _ in archive_rows(target)}
        assert 100 in after_first
        archive(live, before=T0 + 200 * STEP, to=target)
        archive(live, before=T0 + 300 * STEP, to=target)
    kept = {cursor for cursor, _ in archive_rows(target)}
    assert after_first <= kept, f"lost from the archive: {sorted(after_first - kept)}"


def test_a_log_written_by_short_lived_engines_keeps_anchors_for_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive folds at most about ``snapshot_every`` events, however many it moves, also
    of a log written by engines that each append fewer events than that before they close
    (short jobs, a fleet restarting). Broken: such engines take no periodic snapshot (each
    store counts its own commits), and only the two latest close ones were kept. Now a close
    snapshot is kept per stretch of ``every`` seqs, as a periodic one is."""
    path = tmp_path / "live.sqlite3"
    events = history(1_000)
    for n in range(20):  # 20 engines, 50 events each, each closing cleanly
        with SQLiteEventStore(path, writer=f"engine-{n}", snapshot_every=100) as log:
            for event in events[n * 50 : (n + 1) * 50]:
                log.append(event)
    folded = counting_folds(monkeypatch)
    with SQLiteEventStore(path, snapshot_every=100) as live:
        result = archive(live, before=T0 + 950 * STEP, to=tmp_path / "old.sqlite3")
        assert same_totals(live.snapshots.load()[0], fold(events))
    assert result.moved == 950
    assert folded[0] <= 2 * 100, f"folded {folded[0]} of the 950 events moved"


def test_a_stop_that_said_true_while_finishing_a_recorded_range_ends_the_run(
    tmp_path: Path, small_slices: None
) -> None:
    """Once ``stop`` returns True the run ends early, consistent. Broken (before 3128771):
    finishing a stopped run's deletes dropped whether ``stop`` had ended them, and asked
    ``stop`` again; one that then said False let the run go on with the log still holding
    events before its cut, and the fold of the new base raised ``EventLogError``."""
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(300)
    anchored_log(path, events, range(EVERY, 300, EVERY))
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        before = everything(live)

        def after_the_record() -> bool:
            return bool(records(live))

        first = archive(live, before=T0 + 250 * STEP, to=target, stop=after_the_record)
        assert not first.complete  # recorded and cut, the deletes stopped part way
        asked = [0]

        def once() -> bool:
            asked[0] += 1
            return asked[0] == 1

        second = archive(live, before=T0 + 250 * STEP, to=target, stop=once)
        assert not second.complete
        assert archive(live, before=T0 + 250 * STEP, to=target).complete
        assert archived(target) + everything(live) == before


def test_metrics_at_an_instant_after_the_cut_are_unchanged_by_archiving(tmp_path: Path) -> None:
    """An instant after the cut answers as before the archive. Writers stamp before they
    commit, so a few events are out of time order. Broken (before 3128771): unarchived,
    ``metrics --at`` folded every seq up to the last event stamped at or before the instant;
    archived, only the events stamped at or before it. Both now fold the events stamped at or
    before the instant, in seq order."""
    path = tmp_path / "live.sqlite3"
    events = history(400)
    # Events 303 and 304 (seq 304, 305) swap their stamps: the later-stamped one commits first.
    events[303], events[304] = (
        msgspec.structs.replace(events[303], at=events[304].at),
        msgspec.structs.replace(events[304], at=events[303].at),
    )
    anchored_log(path, events, range(EVERY, 400, EVERY))
    copy = tmp_path / "unarchived.sqlite3"
    shutil.copy(path, copy)
    runner = CliRunner()

    def metrics(log: Path, at: datetime) -> str:
        argv = ["metrics", str(log), "--at", at.isoformat(), "--format", "json"]
        result = runner.invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    instant = events[304].at  # stamped before seq 304's event, stored after it
    expected = metrics(copy, instant)
    moved = runner.invoke(
        app,
        [
            "archive",
            str(path),
            "--before",
            (T0 + 250 * STEP).isoformat(),
            "--to",
            str(tmp_path / "o"),
        ],
        catch_exceptions=False,
    )
    assert moved.exit_code == 0, moved.stderr
    assert metrics(path, instant) == expected


def test_metrics_at_a_recent_instant_never_fold_an_event_appended_while_they_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: with no event stamped after the instant, the fold ran to the log's
    end as it was when the snapshot was loaded, so an event appended meanwhile, stamped
    after the instant, was counted. The end is now read first."""
    from devs.risks.multi_model_failover.adapters.cli import queries  # noqa: PLC0415

    path = tmp_path / "live.sqlite3"
    events = history(100)
    anchored_log(path, events, range(EVERY, 100, EVERY))
    instant = events[-1].at + timedelta(seconds=1)  # no event at or after it: yet
    real = queries.seq_stamped

    def racing(store: GroupCommitStore, at: datetime, *, last: bool) -> int | None:
        found = real(store, at, last=last)
        with SQLiteEventStore(path, writer="racer", snapshot_every=None) as other:
            for event in history(8, start=instant + timedelta(minutes=5))[1:]:
                other.append(event)
        return found

    monkeypatch.setattr(queries, "seq_stamped", racing)
    with SQLiteEventStore(path, create=False) as store:
        assert same_totals(queries.snapshot_at(store, instant), fold(events))


# -- what held up --------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_slices")
def test_a_run_stopped_at_any_ask_then_rerun_ends_as_one_uninterrupted_run(
    tmp_path: Path,
) -> None:
    events = history(110)
    cursors = range(EVERY, 110, EVERY)
    reference = tmp_path / "reference"
    reference.mkdir()
    anchored_log(reference / "live.sqlite3", events, cursors)
    with SQLiteEventStore(reference / "live.sqlite3", snapshot_every=EVERY) as live:
        archive(live, before=T0 + 80 * STEP, to=reference / "old.sqlite3")
        want_live = sorted(snapshot_rows(live))
    want_archive = archive_rows(reference / "old.sqlite3")
    whole = fold(events)

    n = 0
    while True:
        n += 1
        folder = tmp_path / f"stop-{n}"
        folder.mkdir()
        path, target = folder / "live.sqlite3", folder / "old.sqlite3"
        anchored_log(path, events, cursors)
        asked = [0]

        def stop(n: int = n, asked: list[int] = asked) -> bool:
            asked[0] += 1
            return asked[0] >= n

        with SQLiteEventStore(path, snapshot_every=EVERY) as live:
            before = everything(live)
            first = archive(live, before=T0 + 80 * STEP, to=target, stop=stop)
            if asked[0] < n:  # ran to its end without being stopped: every ask was tried
                assert first.complete
                break
            assert archive(live, before=T0 + 80 * STEP, to=target).complete
            assert archived(target) + everything(live) == before, n
            assert same_totals(live.snapshots.load()[0], whole), n
            assert same_totals(replay(live), whole), n
            assert sorted(snapshot_rows(live)) == want_live, n
            assert live.snapshots.verify().ok, n
        assert archive_rows(target) == want_archive, n
        assert archive_verifies(target), n
        assert same_totals(replay(target), fold(events[:80])), n
    assert n > 10


def test_anchors_at_the_first_event_just_after_a_cut_and_at_the_cut(tmp_path: Path) -> None:
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(200)
    # Every cursor a stretch can start or end on: 1 (the first event), 60 (the next cut),
    # 61 (just after it), 62 (a stretch of one), 120 (the last cut).
    anchored_log(path, events, range(0, 0))
    with SQLiteEventStore(path, snapshot_every=1) as log:  # each seq a stretch of its own
        for cursor in (1, 2, 60, 61, 62, 119, 120):
            log.snapshots.save(fold(events[:cursor]), cursor, "periodic")
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        before = everything(live)
        archive(live, before=T0 + 60 * STEP, to=target)
        archive(live, before=T0 + 120 * STEP, to=target)
        assert archived(target) + everything(live) == before
        assert same_totals(live.snapshots.load()[0], fold(events))
        assert same_totals(replay(live), fold(events))
        assert live.snapshots.verify().ok
    assert archive_verifies(target)
    assert same_totals(replay(target), fold(events[:120]))


def test_snapshot_every_1_on_the_writer_and_none_on_the_archiver(tmp_path: Path) -> None:
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(300)
    with SQLiteEventStore(path, snapshot_every=1, batch_size=3) as log:
        for event in events:
            log.append(event)
            if event.seq % 5 == 0:
                log.flush()
    with SQLiteEventStore(path, snapshot_every=None) as live:
        assert live.snapshots.within(0, 300), "the writer left periodic snapshots"
        before = everything(live)
        archive(live, before=T0 + 280 * STEP, to=target)
        assert archived(target) + everything(live) == before
        assert same_totals(live.snapshots.load()[0], fold(events))
        assert same_totals(replay(live), fold(events))
    assert archive_verifies(target)
    assert same_totals(replay(target), fold(events[:280]))


def test_snapshots_saved_and_events_appended_while_an_archive_runs(
    tmp_path: Path, small_slices: None
) -> None:
    """Another store on the log saving periodic snapshots (start-ups pinned anywhere, which
    thin the anchors' stretches) and another writer appending, while the archive runs."""
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(1_600)
    with SQLiteEventStore(path, snapshot_every=10, batch_size=7) as log:
        for event in events[:1_000]:
            log.append(event)
    live = SQLiteEventStore(path, snapshot_every=10)
    writer = SQLiteEventStore(path, snapshot_every=10, writer="other")
    saver = SQLiteEventStore(path, snapshot_every=3, writer="saver")
    done = threading.Event()
    rnd = random.Random(13)

    def append() -> None:
        for event in events[1_000:]:
            writer.append(event)
        writer.flush()

    def save() -> None:
        while not done.is_set():
            with contextlib.suppress(EventLogError):  # a pin before the new cut
                saver.snapshots.load(rnd.randint(1, saver.last_seq()), keep=True)
                saver.snapshots.take("periodic")

    threads = [threading.Thread(target=append), threading.Thread(target=save)]
    for thread in threads:
        thread.start()
    try:
        result = archive(live, before=T0 + 800 * STEP, to=target)
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    writer.close()
    saver.close()
    try:
        held = archived(target) + everything(live)
        assert result.complete
        assert [e.seq for e, _ in held] == list(range(1, 1_601))
        whole = fold(e for e, _ in held)
        assert same_totals(live.snapshots.load()[0], whole)
        assert same_totals(replay(live), whole)
        assert live.snapshots.verify().ok
    finally:
        live.close()
    assert archive_verifies(target)
    assert same_totals(replay(target), fold(e for e, _ in held[:800]))


def test_newer_events_move_intact_in_unread_stretches_and_stop_a_folded_one(
    tmp_path: Path,
) -> None:
    """Events of a type this version does not know (envelope sound, as a newer version writes
    them): this version's snapshots fold over them, so they are anchors' stretches and move
    byte for byte; one after the last anchor stops the run before anything is deleted, and
    once the log has a snapshot after it the archive completes."""
    path, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    events = history(300)
    with SQLiteEventStore(path, snapshot_every=None) as log:
        for event in events:
            log.append(event)
    make_newer(path, [1, 45, 250])
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        for cursor in range(EVERY, 240, EVERY):
            live.snapshots.save(live.snapshots.load(cursor)[0], cursor, "periodic")
    rows = raw_rows(path)
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        whole = live.snapshots.load()[0]
        with pytest.raises(EventLogError, match="from_the_future"):
            archive(live, before=T0 + 260 * STEP, to=target)
        assert raw_rows(path) == rows, "nothing deleted"
        live.snapshots.save(live.snapshots.load(260)[0], 260, "periodic")
        assert archive(live, before=T0 + 260 * STEP, to=target).complete
        assert same_totals(live.snapshots.load()[0], whole)
        assert same_totals(replay(live), whole)
    assert raw_rows(target) == rows[:260]
    assert raw_rows(path) == rows[260:]
    assert archive_verifies(target)


def test_anchors_on_every_backend_with_stops_and_a_continued_archive(
    open_log: Opener, tmp_path: Path, small_slices: None
) -> None:
    events = history(400)
    writers = [open_log(f"replica-{n}", snapshot_every=None) for n in range(2)]
    for start in range(0, len(events), 7):
        store = writers[(start // 7) % 2]
        for event in events[start : start + 7]:
            store.append(event)
        assert store.flush()
    for store in writers:
        store.close()
    live = open_log(snapshot_every=EVERY)
    for cursor in range(EVERY + 3, 400, EVERY):  # off the multiples of every
        live.snapshots.save(fold(events[:cursor]), cursor, "periodic")
    before = everything(live)
    whole = fold(events)
    target = tmp_path / "old.sqlite3"
    asked = [0]

    def stop() -> bool:
        asked[0] += 1
        return asked[0] % 4 == 0

    for when in (150, 150, 150, 150, 150, 150, 150, 150, 330, 330, 330, 330, 330, 330, 330):
        archive(live, before=T0 + when * STEP, to=target, stop=stop)
    for when in (150, 330):
        archive(live, before=T0 + when * STEP, to=target)
    assert archived(target) + everything(live) == before
    assert [(r.first_seq, r.last_seq) for r in records(live)][-1][1] == 330
    assert same_totals(live.snapshots.load()[0], whole)
    assert same_totals(replay(live), whole)
    assert live.snapshots.verify().ok
    assert archive_verifies(target)
    assert same_totals(replay(target), fold(events[:330]))
    anchors = {c for c, k in archive_rows(target) if k == "archive"}
    assert set(range(EVERY + 3, 330, EVERY)) <= anchors


def test_thinning_keeps_one_periodic_snapshot_per_stretch_on_every_backend(
    open_log: Opener,
) -> None:
    events = history(130)
    writer = open_log("writer", snapshot_every=None)
    for event in events:
        writer.append(event)
    assert writer.flush()
    store = open_log(snapshot_every=50)
    for cursor in (10, 20, 49, 50, 60, 99, 100, 101, 130):
        store.snapshots.save(fold(events[:cursor]), cursor, "periodic")
    assert sorted(snapshot_rows(store)) == [(49, "periodic"), (99, "periodic"), (130, "periodic")]


def test_the_snapshot_table_stays_bounded_with_a_fleet_of_writers_closing(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    events = history(600)
    fleet = [SQLiteEventStore(path, writer=f"w{n}", snapshot_every=10) for n in range(4)]
    for index, event in enumerate(events):
        fleet[index % 4].append(event)
        if index % 25 == 24:
            closing = index % 4
            fleet[closing].close()
            fleet[closing] = SQLiteEventStore(path, writer=f"w{index}", snapshot_every=10)
    for store in fleet:
        store.close()
    with SQLiteEventStore(path, snapshot_every=10) as live:
        kinds = snapshot_rows(live)
        assert len(kinds) <= 600 // 10 + 3, kinds
        assert live.snapshots.verify().ok
        stored = [event for event, _ in everything(live)]
        assert len(stored) == len(events)
        assert same_totals(live.snapshots.load()[0], fold(stored))


def test_retention_with_anchors_keeps_every_answer(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    start = datetime(2025, 3, 1, tzinfo=UTC)
    events = history(3 * 24 * 6, start=start)  # three days, one event every ten minutes
    events = [msgspec.structs.replace(e, at=start + i * timedelta(minutes=10)) for i, e in
              enumerate(events)]  # fmt: skip
    anchored_log(path, events, range(EVERY + 7, len(events), EVERY))
    with SQLiteEventStore(path, snapshot_every=EVERY) as live:
        before = everything(live)
        retention = Retention(1.0, tmp_path / "archive", 3600.0)
        done = archive_round(live, retention, start + timedelta(days=3))
        assert [r.complete for r in done] == [True, True]
        files = sorted((tmp_path / "archive").iterdir())
        assert len(files) == 2
        assert [row for f in files for row in archived(f)] + everything(live) == before
        assert same_totals(live.snapshots.load()[0], fold(events))
        assert same_totals(replay(live), fold(events))
        assert live.snapshots.verify().ok
    for file in files:
        assert archive_verifies(file), file
