"""`failover archive`, and the commands on an archived log: answers unchanged, the archive
named for what it holds, read with --archive, and `verify` checking the snapshots."""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import SQLiteEventStore, replay
from devs.risks.multi_model_failover.adapters.cli import queries
from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Maintenance,
    StateChanged,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.projections import Snapshot, fold
from devs.risks.multi_model_failover.storage import snapshots
from devs.risks.multi_model_failover.storage.archive import archive, read_rows, records

from .conftest import write_incident

Run = Callable[..., Result]
RunProcess = Callable[..., subprocess.CompletedProcess[str]]

CUT_TIME = "2024-05-01T03:02:00Z"  # the incident runs from 03:00:00 to 03:04:44
LATER_CUT = "2024-05-01T03:03:30Z"
EARLY = "2024-05-01T03:01:00Z"  # primary unhealthy, before the first cut
AFTER = "2024-05-01T03:04:00Z"  # after every cut
WRITER = Path(__file__).with_name("log_writer.py")


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def one_line(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("failover: ")
    return lines[0]


def events_of(path: Path) -> list[tuple[object, str]]:
    with SQLiteEventStore(path, create=False) as log:
        return list(read_rows(log, after=0, upto=log.last_seq()))


def older_than(path: Path, when: str) -> int:
    """The seq before the log's first event at or after ``when`` (the incident is in order)."""
    instant = datetime.fromisoformat(when)
    with SQLiteEventStore(path, create=False) as log:
        return next(e.seq for e in log.read() if e.at >= instant) - 1


# -- the command ---------------------------------------------------------------------------------


def test_archive_moves_the_old_events_and_says_what_moved_and_the_sizes(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    before = events_of(incident_log)
    cut = older_than(incident_log, CUT_TIME)
    target = tmp_path / "old.sqlite3"

    result = ok(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", target))

    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"moved {cut} event(s) (seq 1 to {cut}, 2024-05-01 03:00:00.000")
    assert lines[0].endswith(f"into {target}")
    assert f"cut at seq {cut}" in lines[1]
    assert "KB ->" in lines[1]
    assert "events/s" in lines[1]
    assert events_of(target) + events_of(incident_log) == before


def test_archive_json(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    result = ok(
        run_cli("archive", incident_log, "--before", CUT_TIME, "--to", tmp_path / "a", "--json")
    )
    document = msgspec.json.decode(result.stdout)
    with SQLiteEventStore(tmp_path / "a", create=False) as moved:
        cut = moved.last_seq()
    assert document["moved"] == document["copied"] == document["last_seq"] == cut
    assert document["first_seq"] == 1
    assert document["size_after"] < document["size_before"]
    assert document["complete"] is True


def test_nothing_to_move_creates_no_archive(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    result = ok(run_cli("archive", incident_log, "--before", "2024-04-30", "--to", tmp_path / "a"))
    assert result.stdout.startswith("nothing to move:")
    assert not (tmp_path / "a").exists()


def test_archiving_again_continues_the_archive(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    before = events_of(incident_log)
    first, second = older_than(incident_log, CUT_TIME), older_than(incident_log, LATER_CUT)
    target = tmp_path / "old.sqlite3"
    ok(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", target))
    again = ok(run_cli("archive", incident_log, "--before", LATER_CUT, "--to", target))
    assert f"(seq {first + 1} to {second}, " in again.stdout
    assert events_of(target) + events_of(incident_log) == before


def test_the_help_names_the_command_and_its_options(run_cli: Run) -> None:
    assert "archive" in ok(run_cli("--help")).stdout
    text = ok(run_cli("archive", "--help")).stdout
    for option in ("--before", "--to", "--json"):
        assert option in text
    for command in ("state", "metrics", "timeline"):
        assert "--archive" in ok(run_cli(command, "--help")).stdout


# -- errors --------------------------------------------------------------------------------------


def test_a_missing_log_is_one_line_and_creates_nothing(run_cli: Run, tmp_path: Path) -> None:
    line = one_line(
        run_cli(
            "archive", tmp_path / "nowhere.sqlite3", "--before", CUT_TIME, "--to", tmp_path / "a"
        )
    )
    assert "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_a_log_that_is_not_sqlite_is_one_line(run_cli: Run, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n" * 100)
    line = one_line(run_cli("archive", notes, "--before", CUT_TIME, "--to", tmp_path / "a"))
    assert "not an SQLite database" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_to_in_a_missing_folder_is_one_line(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    target = tmp_path / "missing" / "old.sqlite3"
    line = one_line(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", target))
    assert "--to" in line
    assert "does not exist" in line
    assert not target.parent.exists()


def test_to_that_is_someone_elses_database_is_refused_untouched(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    import sqlite3  # noqa: PLC0415

    other = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(other)) as conn, conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    content = other.read_bytes()
    line = one_line(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", other))
    assert "not a failover event log" in line
    assert other.read_bytes() == content


def test_to_that_is_the_log_itself_is_refused(run_cli: Run, incident_log: Path) -> None:
    before = events_of(incident_log)
    line = one_line(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", incident_log))
    assert "itself" in line
    assert events_of(incident_log) == before


def test_a_bad_time_is_one_line(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    line = one_line(
        run_cli("archive", incident_log, "--before", "yesterday-ish", "--to", tmp_path / "a")
    )
    assert "--before" in line
    assert not (tmp_path / "a").exists()


# -- commands on an archived log -----------------------------------------------------------------

SAME_ANSWERS = [
    ("metrics", "--format", "json"),
    ("metrics", "--format", "prometheus"),
    ("metrics", "--at", AFTER, "--format", "json"),
    ("state", "--json"),
    ("state", "--at", AFTER, "--json"),
    ("audit", "--json"),
    ("timeline", "--since", AFTER, "--json"),
]


@pytest.fixture
def archived(run_cli: Run, incident_log: Path, tmp_path: Path) -> dict[str, Result]:
    """The answers to SAME_ANSWERS (and a few more) before the log was archived at CUT_TIME."""
    questions = [*SAME_ANSWERS, *WITH_ARCHIVE]
    answers = {" ".join(q): ok(run_cli(q[0], incident_log, *q[1:])) for q in questions}
    ok(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", tmp_path / "old.sqlite3"))
    return answers


@pytest.mark.parametrize("question", SAME_ANSWERS, ids=" ".join)
def test_the_archived_log_answers_as_before(
    run_cli: Run, incident_log: Path, archived: dict[str, Result], question: tuple[str, ...]
) -> None:
    now = ok(run_cli(question[0], incident_log, *question[1:]))
    assert now.stdout == archived[" ".join(question)].stdout
    assert now.stderr == ""


def test_replay_and_verify_agree_after_archiving(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    whole = replay(incident_log)
    ok(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", tmp_path / "old.sqlite3"))
    assert msgspec.to_builtins(replay(incident_log)) == msgspec.to_builtins(whole)
    verified = ok(run_cli("verify", incident_log))
    assert "snapshots agree with the log" in verified.stdout


WITH_ARCHIVE = [
    ("state", "--at", EARLY, "--json"),
    ("metrics", "--at", EARLY, "--format", "json"),
    ("timeline", "--since", EARLY, "--json"),
    ("timeline", "--json"),
    ("timeline", "--last", "5", "--json"),
    ("timeline", "--type", "state_changed", "--json"),
    ("timeline", "--model", "secondary", "--until", EARLY, "--json"),
]


@pytest.mark.parametrize("question", WITH_ARCHIVE, ids=" ".join)
def test_with_the_archive_a_question_before_the_cut_is_answered_as_before(
    run_cli: Run,
    incident_log: Path,
    tmp_path: Path,
    archived: dict[str, Result],
    question: tuple[str, ...],
) -> None:
    now = ok(
        run_cli(question[0], incident_log, *question[1:], "--archive", tmp_path / "old.sqlite3")
    )
    assert now.stdout == archived[" ".join(question)].stdout
    assert now.stderr == ""


@pytest.mark.usefixtures("archived")
def test_state_before_the_cut_without_the_archive_names_it(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    for command in ("state", "metrics"):
        line = one_line(run_cli(command, incident_log, "--at", EARLY))
        assert "before the cut" in line
        assert f"--archive {tmp_path / 'old.sqlite3'}" in line


@pytest.mark.usefixtures("archived")
def test_timeline_before_the_cut_without_the_archive_notes_it(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    result = ok(run_cli("timeline", incident_log, "--since", EARLY))
    (note,) = result.stderr.splitlines()
    assert note.startswith("note: seq 1 to ")
    assert str(tmp_path / "old.sqlite3") in note
    first = result.stdout.splitlines()[0]
    assert first.startswith("2024-05-01 03:02:")  # the live log's events, from the cut on
    quiet = ok(run_cli("timeline", incident_log, "--since", AFTER))
    assert quiet.stderr == ""


def test_two_archives_read_together_in_any_order(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    question = ("state", incident_log, "--at", EARLY, "--json")
    expected = ok(run_cli(*question)).stdout
    timeline = ok(run_cli("timeline", incident_log, "--json")).stdout
    one, two = tmp_path / "one.sqlite3", tmp_path / "two.sqlite3"
    ok(run_cli("archive", incident_log, "--before", "2024-05-01T03:00:50Z", "--to", one))
    ok(run_cli("archive", incident_log, "--before", LATER_CUT, "--to", two))

    both = ok(run_cli(*question, "--archive", two, "--archive", one))
    assert both.stdout == expected
    assert (
        ok(run_cli("timeline", incident_log, "--json", "--archive", one, "--archive", two)).stdout
        == timeline
    )
    # Only the first: the second one's events are missing between it and the log.
    line = one_line(run_cli(*question, "--archive", one))
    assert "leave seq" in line
    assert str(two) in line
    # Only the second: an instant among the first one's events needs it, and names it.
    line = one_line(
        run_cli("state", incident_log, "--at", "2024-05-01T03:00:40Z", "--archive", two)
    )
    assert str(one) in line
    assert str(two) not in line
    # An instant after the first one's events: the second one alone tells the states (the
    # second starts from the snapshot of everything before it).
    alone = msgspec.json.decode(ok(run_cli(*question, "--archive", two)).stdout)
    full = msgspec.json.decode(expected)
    assert {m: row["state"] for m, row in alone["models"].items()} == {
        m: row["state"] for m, row in full["models"].items()
    }


def test_an_archive_of_another_log_is_refused(
    run_cli: Run, incident_log: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.sqlite3"
    other.write_bytes(incident_log.read_bytes())
    with SQLiteEventStore(other) as log:  # another log: its own id
        log.transaction([("UPDATE meta SET value = 'another' WHERE key = 'log_id'", ())])
    ok(run_cli("archive", other, "--before", CUT_TIME, "--to", tmp_path / "theirs.sqlite3"))
    ok(run_cli("archive", incident_log, "--before", CUT_TIME, "--to", tmp_path / "ours.sqlite3"))

    line = one_line(
        run_cli("state", incident_log, "--at", EARLY, "--archive", tmp_path / "theirs.sqlite3")
    )
    assert "an archive of another log" in line
    line = one_line(run_cli("state", incident_log, "--at", EARLY, "--archive", incident_log))
    assert "not an archive" in line
    line = one_line(run_cli("state", incident_log, "--archive", tmp_path / "missing.sqlite3"))
    assert "does not exist" in line


# -- verify --------------------------------------------------------------------------------------


def test_verify_without_expect_checks_the_snapshots(run_cli: Run, incident_log: Path) -> None:
    result = ok(run_cli("verify", incident_log))
    assert result.stdout.startswith(f"ok: {incident_log}: snapshots agree with the log: seq ")


def test_verify_fails_loudly_when_a_snapshot_disagrees_with_the_log(
    run_cli: Run, incident_log: Path
) -> None:
    with SQLiteEventStore(incident_log) as log:
        wrong = fold(log.read())
        wrong.metrics.calls += 1
        log.snapshots.save(wrong, log.last_seq(), "periodic")

    for args in ((), ("--expect", "failover")):
        result = run_cli("verify", incident_log, *args)
        assert result.exit_code == 1
        assert "metrics.calls" in result.stderr
        assert str(incident_log) in result.stderr
        assert result.stdout == ""


# -- while an engine appends -----------------------------------------------------------------------


def test_archiving_while_another_process_appends_loses_nothing(
    run_cli: Run, tmp_path: Path
) -> None:
    log, ready, stop = tmp_path / "live.sqlite3", tmp_path / "ready", tmp_path / "stop"
    writer = subprocess.Popen(  # noqa: S603 - our own test helper
        [sys.executable, str(WRITER), str(log), str(ready), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and writer.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ok(run_cli("archive", log, "--before", "now", "--to", tmp_path / "a"))
        written = len(events_of(log))
        while len(events_of(log)) == written and writer.poll() is None:  # it goes on writing
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.touch()
        _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors

    moved, kept = events_of(tmp_path / "a"), events_of(log)
    seqs = [e.seq for e, _ in moved + kept]  # type: ignore[attr-defined]
    assert seqs == list(range(1, len(seqs) + 1))
    assert kept, "the writer went on after the archive"
    with SQLiteEventStore(log, create=False) as live:
        assert records(live)[0].last_seq == len(moved)
        assert msgspec.to_builtins(replay(live)) == msgspec.to_builtins(
            fold(e for e, _ in moved + kept)  # type: ignore[misc]
        )


# -- PostgreSQL ------------------------------------------------------------------------------------


def test_a_postgresql_log_archives_to_a_file_and_answers_as_before(
    run_cli: Run, pg_url: str, tmp_path: Path
) -> None:
    anyio.run(write_incident, pg_url)
    before = {q: ok(run_cli(q[0], pg_url, *q[1:])).stdout for q in SAME_ANSWERS}
    early = ok(run_cli("state", pg_url, "--at", EARLY, "--json")).stdout

    result = ok(run_cli("archive", pg_url, "--before", CUT_TIME, "--to", tmp_path / "pg.sqlite3"))

    assert "VACUUM" in result.stdout
    for question, answer in before.items():
        assert ok(run_cli(question[0], pg_url, *question[1:])).stdout == answer, question
    with_archive = run_cli(
        "state", pg_url, "--at", EARLY, "--json", "--archive", tmp_path / "pg.sqlite3"
    )
    assert ok(with_archive).stdout == early


# -- archives read from their nearest snapshot ---------------------------------------------------

EVERY = 40  # the live store's snapshot_every: the archive gets a snapshot every 40 events
BASE = datetime(2024, 5, 1, tzinfo=UTC)


def busy_history(count: int) -> list[Event]:
    """Two models, calls failing over, health changes and maintenance, one event a minute;
    every 17th event stamped 3 minutes late and every 23rd 2 minutes early (writers' clocks)."""
    events: list[Event] = [EngineStarted(at=BASE, models=("a", "b"))]
    for n in range(1, count):
        at = BASE + timedelta(minutes=n)
        if n % 17 == 0:
            at += timedelta(minutes=3)
        elif n % 23 == 0:
            at -= timedelta(minutes=2)
        call = f"call-{n // 5}"
        match n % 5:
            case 0:
                events.append(CallStarted(at=at, call_id=call, order=("a", "b")))
            case 1:
                events.append(
                    AttemptFailed(
                        at=at,
                        call_id=call,
                        model_id="a",
                        attempt=1,
                        latency=0.25,
                        error_kind=ErrorKind.SERVER,
                        message="503",
                        final=True,
                    )
                )
            case 2:
                events.append(
                    CallSucceeded(
                        at=at, call_id=call, model_id="b", attempts=2, failovers=1, latency=0.5
                    )
                )
            case 3:
                healthy, degraded = HealthState.HEALTHY, HealthState.DEGRADED
                to_degraded = n % 2 == 1
                events.append(
                    StateChanged(
                        at=at,
                        model_id="a",
                        from_state=healthy if to_degraded else degraded,
                        to_state=degraded if to_degraded else healthy,
                        reason=f"change {n}",
                    )
                )
            case _:
                events.append(
                    Maintenance(at=at, model_id="b", on=n % 3 == 0, reason="rotation", by="ops")
                )
    return events


@pytest.fixture
def archived_pair(tmp_path: Path) -> tuple[Path, Path, Path, list[Event]]:
    """(the whole log, a copy of it with its first 300 events archived, the archive, the
    events); the live store's ``snapshot_every`` is ``EVERY``."""
    events = busy_history(400)
    whole = tmp_path / "whole.sqlite3"
    with SQLiteEventStore(whole, snapshot_every=EVERY) as log:
        for event in events:
            log.append(event)
    live, target = tmp_path / "live.sqlite3", tmp_path / "old.sqlite3"
    shutil.copyfile(whole, live)
    with SQLiteEventStore(live, snapshot_every=EVERY) as store:
        result = archive(store, before=BASE + timedelta(minutes=301), to=target)
    assert result.last_seq is not None
    assert result.last_seq >= 290
    stored = [e for e, _ in events_of(whole)]
    return whole, live, target, stored  # type: ignore[return-value]


class Folded:
    """Counts the events folded (by any fold: a snapshot's load or a command's own)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for module in (queries, snapshots):
            monkeypatch.setattr(module, "apply", self._counting(module.apply))

    def _counting(self, apply: Callable[[Snapshot, Event], None]) -> Callable[..., None]:
        def counted(snap: Snapshot, event: Event) -> None:
            self.count += 1
            apply(snap, event)

        return counted


def instants(events: list[Event], count: int, seed: int) -> list[datetime]:
    """``count`` instants across the archived range: random ones (seeded), and the stamps of
    events themselves (the boundaries: an event stamped at the instant is in the fold)."""
    rng = random.Random(seed)
    low, high = BASE, BASE + timedelta(minutes=300)
    span = (high - low).total_seconds()
    found = [low + timedelta(seconds=rng.uniform(0, span)) for _ in range(count)]
    found += [rng.choice(events[:300]).at for _ in range(count)]
    return found


def test_state_and_metrics_with_the_archive_answer_as_the_whole_log_at_any_instant(
    run_cli: Run, archived_pair: tuple[Path, Path, Path, list[Event]]
) -> None:
    whole, live, target, events = archived_pair
    with SQLiteEventStore(target, create=False) as log:
        kinds = [k for (k,) in log.query("SELECT kind FROM snapshots ORDER BY cursor")]
    assert kinds.count("archive") >= 7

    for instant in instants(events, 12, seed=13):
        at = instant.isoformat()
        expected = ok(run_cli("state", whole, "--at", at, "--json")).stdout
        got = ok(run_cli("state", live, "--at", at, "--archive", target, "--json")).stdout
        assert got == expected, at
        # The metrics of the events stamped at or before the instant, in seq order.
        metrics = ok(run_cli("metrics", live, "--at", at, "--archive", target, "--format", "json"))
        folded = fold(e for e in events if e.at <= instant)
        assert msgspec.json.decode(metrics.stdout) == msgspec.to_builtins(folded.metrics), at


def test_a_question_inside_the_archive_folds_at_most_n_events_past_a_snapshot(
    run_cli: Run,
    archived_pair: tuple[Path, Path, Path, list[Event]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, live, target, events = archived_pair
    folded = Folded(monkeypatch)
    # Late and early stamps reach 3 minutes either way: a few events past the N.
    margin = 6
    for instant in instants(events, 6, seed=5):
        at = instant.isoformat()
        for args in (
            ("state", live, "--at", at, "--archive", target),
            ("metrics", live, "--at", at, "--archive", target),
        ):
            folded.count = 0
            ok(run_cli(*args))
            assert folded.count <= EVERY + margin, (args[0], at, folded.count)


def test_an_archive_without_snapshots_reads_the_same_from_its_start(
    run_cli: Run,
    archived_pair: tuple[Path, Path, Path, list[Event]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, live, target, events = archived_pair
    with contextlib.closing(sqlite3.connect(target)) as conn, conn:  # as an older version wrote it
        conn.execute("DELETE FROM snapshots WHERE kind = 'archive'")
    folded = Folded(monkeypatch)
    at = events[280].at.isoformat()

    got = ok(run_cli("metrics", live, "--at", at, "--archive", target, "--format", "json"))

    assert got.stdout == ok(run_cli("metrics", whole, "--at", at, "--format", "json")).stdout
    assert folded.count > 250  # from the archive's start


def test_a_continued_archive_is_read_from_its_snapshots(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = busy_history(400)
    whole, live, target = tmp_path / "whole.sqlite3", tmp_path / "live", tmp_path / "old"
    with SQLiteEventStore(whole, snapshot_every=EVERY) as log:
        for event in events:
            log.append(event)
    shutil.copyfile(whole, live)
    for minutes in (100, 200, 301):
        with SQLiteEventStore(live, snapshot_every=EVERY) as store:
            archive(store, before=BASE + timedelta(minutes=minutes), to=target)
    folded = Folded(monkeypatch)
    for instant in instants([e for e, _ in events_of(whole)], 4, seed=8):  # type: ignore[misc]
        at = instant.isoformat()
        folded.count = 0
        got = ok(run_cli("state", live, "--at", at, "--archive", target, "--json")).stdout
        assert folded.count <= EVERY + 6, at
        assert got == ok(run_cli("state", whole, "--at", at, "--json")).stdout, at
