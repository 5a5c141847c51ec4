"""`failover whatif`: the command line over the demo's log and hand-written ones."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from typer.testing import Result

from devs.risks.multi_model_failover.adapters.cli.demo import (
    MAINTENANCE_OFF_AT,
    MAINTENANCE_ON_AT,
    create_marked_log,
    play,
)
from devs.risks.multi_model_failover.adapters.cli.render import Output
from devs.risks.multi_model_failover.adapters.cli.whatif import (
    WhatIfInputError,
    parse_maintenance,
)
from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import AttemptFailed as Failed
from devs.risks.multi_model_failover.core.events import (
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .scenario import START, Action, CallSpec, Scenario, Spell, record_scenario

Run = Callable[..., Result]
END = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's incident, written once for this module (the commands only read it)."""
    path = tmp_path_factory.mktemp("demo") / "events.sqlite3"
    create_marked_log(path)
    anyio.run(lambda: play(path, seed=7, out=Output(stream=io.StringIO()), end=END))
    return path


def policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_table_prints_calibration_first_then_both_sides(
    run_cli: Run, demo_log: Path, tmp_path: Path
) -> None:
    file = policy(tmp_path, "multi_model_failover:\n  retry_policy: {max_attempts: 1}\n")
    result = run_cli("whatif", demo_log, "--policy", file)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("calibration ok: the recorded policy, replayed, reproduces all")
    out = result.stdout
    for phrase in (
        "what if: retry_policy max_attempts=1",
        "recorded and what-if",
        "latency p95",
        "backoff time",
        "per model (the load on each provider)",
        "change outcome",
        "inferred:",
    ):
        assert phrase in out, phrase
    retries = next(line for line in lines if line.startswith("retries "))
    assert retries.split()[2] == "0"  # the what-if column: no retry with one attempt each


def test_json_has_both_sides_calibration_and_inference(run_cli: Run, demo_log: Path) -> None:
    result = run_cli("whatif", demo_log, "--without", "secondary", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    for side in ("recorded", "what_if"):
        for key in ("calls", "calls_succeeded", "calls_failed", "attempts", "failovers"):
            assert isinstance(document[side][key], int), (side, key)
        assert set(document[side]["by_model"]) <= {"primary", "secondary", "tertiary"}
    assert document["calibration"]["ok"] is True
    assert document["calibration"]["calls"] == document["recorded"]["calls"]
    assert "secondary" not in document["what_if"]["by_model"]
    assert document["recorded"]["by_model"]["secondary"]["attempts"] > 0
    assert document["inferred"]["answers"] > 0
    assert document["change"]["without"] == ["secondary"]


def test_html_draws_both_timelines_one_above_the_other(run_cli: Run, demo_log: Path) -> None:
    start = END - timedelta(seconds=1200)
    window = (start + timedelta(seconds=MAINTENANCE_ON_AT - 60)).isoformat()
    result = run_cli("whatif", demo_log, "--maintenance", f"tertiary@{window}", "--format", "html")
    assert result.exit_code == 0, result.stderr
    page = result.stdout
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<svg class="health"') == 2
    assert page.index("Recorded: health") < page.index("What if: health")
    assert "http://" not in page
    assert "https://" not in page
    assert "calibration ok" in page
    # The what-if's maintenance mark on the tertiary is drawn in its timeline only.
    recorded, what_if = page.split("What if: health")
    assert 'data-model="tertiary"' in what_if
    mark = 'class="maintenance-mark"'
    assert what_if.count(mark) == recorded.count(mark) + 1


def test_a_window_covers_the_calls_that_start_in_it(run_cli: Run, demo_log: Path) -> None:
    start = END - timedelta(seconds=1200)
    since = (start + timedelta(seconds=MAINTENANCE_ON_AT)).isoformat()
    until = (start + timedelta(seconds=MAINTENANCE_OFF_AT)).isoformat()
    whole = json.loads(run_cli("whatif", demo_log, "--format", "json").stdout)
    result = run_cli("whatif", demo_log, "--since", since, "--until", until, "--format", "json")
    assert result.exit_code == 0, result.stderr
    part = json.loads(result.stdout)
    assert part["calibration"]["ok"] is True
    assert 0 < part["recorded"]["calls"] < whole["recorded"]["calls"]
    assert part["recorded"]["calls"] == part["what_if"]["calls"]
    # The secondary is in maintenance for the whole window: the tertiary serves instead.
    assert "secondary" not in part["recorded"]["by_model"]
    assert part["replayed_from"] == whole["replayed_from"]  # from the engine start


def test_a_policy_file_reorders_by_ids_alone(run_cli: Run, demo_log: Path, tmp_path: Path) -> None:
    file = policy(
        tmp_path,
        "multi_model_failover:\n  clients:\n    - id: tertiary\n  health_check_interval: 15\n",
    )
    result = run_cli("whatif", demo_log, "--policy", file, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["change"]["order"] == ["tertiary"]
    assert document["change"]["health_check_interval"] == 15
    served = document["what_if"]["by_model"]["tertiary"]["calls_served"]
    assert served > document["recorded"]["by_model"]["tertiary"]["calls_served"]
    assert document["inferred"]["probes"] > 0  # its own probe schedule: new probes


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("multi_model_failover:\n  retry_policy: {max_attempt: 1}\n", "max_attempt"),
        ("multi_model_failover:\n  retry_policy: {jitter: sometimes}\n", "jitter"),
        ("multi_model_failover:\n  colour: blue\n", "colour"),
        ("multi_model_failover:\n  clients: [{id: nobody}]\n", "nobody"),
        ("multi_model_failover:\n  health_policy: {unhealthy_after: 0}\n", "unhealthy_after"),
        ("- just\n- a list\n", "mapping"),
        ("multi_model_failover: {retry_policy: {a: 1}\n", "YAML"),
    ],
)
def test_a_policy_it_cannot_use_is_one_line_and_exit_2(
    run_cli: Run, demo_log: Path, tmp_path: Path, text: str, words: str
) -> None:
    result = run_cli("whatif", demo_log, "--policy", policy(tmp_path, text))
    assert result.exit_code == 2
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--without", "nobody"), "nobody"),
        (("--without", "primary", "--without", "secondary", "--without", "tertiary"), "every"),
        (("--maintenance", "primary"), "MODEL@WHEN"),
        (("--maintenance", "primary@soon"), "soon"),
        (("--maintenance", "nobody@now"), "nobody"),
        (("--format", "pdf"), "pdf"),
        (("--since", "yesterday-ish"), "--since"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    run_cli: Run, demo_log: Path, args: tuple[str, ...], words: str
) -> None:
    result = run_cli("whatif", demo_log, *args)
    assert result.exit_code == 2
    assert words in result.stderr
    assert result.stdout == ""


def test_a_missing_log_is_exit_2_and_creates_nothing(run_cli: Run, tmp_path: Path) -> None:
    result = run_cli("whatif", tmp_path / "nope.sqlite3")
    assert result.exit_code == 2
    assert not (tmp_path / "nope.sqlite3").exists()


def write_log(path: Path, events: list[Event]) -> None:
    with SQLiteEventStore(path) as store:
        for event in events:
            store.append(event)
        assert store.flush()


def test_a_log_without_an_engine_start_cannot_be_replayed(run_cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    write_log(path, [CallStarted(at=END, call_id="c1", order=("a",))])
    result = run_cli("whatif", path)
    assert result.exit_code == 2
    assert "no engine_started" in result.stderr


def test_a_calibration_that_fails_prints_the_report_and_exits_1(
    run_cli: Run, tmp_path: Path
) -> None:
    # The log says max_attempts 1, yet shows a retry: no replay of that policy gives it.
    t = [END + timedelta(seconds=s) for s in (0, 0.1, 0.3, 0.3, 0.8, 0.8, 1.0, 1.0)]
    path = tmp_path / "log.sqlite3"
    write_log(
        path,
        [
            EngineStarted(at=t[0], models=("a", "b"), retry_policy={"max_attempts": 1}),
            CallStarted(at=t[1], call_id="c1", order=("a", "b")),
            AttemptStarted(at=t[1], call_id="c1", model_id="a", attempt=1),
            Failed(
                at=t[2],
                call_id="c1",
                model_id="a",
                attempt=1,
                latency=0.2,
                error_kind=ErrorKind.SERVER,
            ),
            Backoff(at=t[3], call_id="c1", model_id="a", attempt=1, delay=0.5),
            AttemptStarted(at=t[4], call_id="c1", model_id="a", attempt=2),
            AttemptSucceeded(at=t[6], call_id="c1", model_id="a", attempt=2, latency=0.2),
            CallSucceeded(
                at=t[7], call_id="c1", model_id="a", attempts=2, failovers=0, latency=0.9
            ),
        ],
    )
    result = run_cli("whatif", path)
    assert result.exit_code == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith("calibration FAILED: 1 of 1 call(s)")
    assert "recorded: served by a after 2 attempt(s)" in result.stdout
    assert "replayed: failed (exhausted, unknown)" in result.stdout  # b: never seen answering
    assert "calibration failed" in result.stderr
    document = json.loads(run_cli("whatif", path, "--format", "json").stdout)
    assert document["calibration"]["ok"] is False
    assert document["calibration"]["mismatches"][0]["call_id"] == "c1"


NOW = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("primary@2024-05-01T03:12:00Z", datetime(2024, 5, 1, 3, 12, tzinfo=UTC), None),
        (
            "primary@2024-05-01T03:12:00Z-2024-05-01T03:20:00Z",
            datetime(2024, 5, 1, 3, 12, tzinfo=UTC),
            datetime(2024, 5, 1, 3, 20, tzinfo=UTC),
        ),
        (
            "primary@2024-05-01T03:12-2024-05-01T03:20",
            datetime(2024, 5, 1, 3, 12, tzinfo=UTC),
            datetime(2024, 5, 1, 3, 20, tzinfo=UTC),
        ),
        (
            "primary@03:12-03:20",
            datetime(2024, 5, 1, 3, 12, tzinfo=UTC),
            datetime(2024, 5, 1, 3, 20, tzinfo=UTC),
        ),
        ("primary@-15m", NOW - timedelta(minutes=15), None),
        ("primary@-15m--5m", NOW - timedelta(minutes=15), NOW - timedelta(minutes=5)),
        ("gpt@azure@now", NOW, None),  # a model id may hold @: the time is after the last
    ],
)
def test_maintenance_ranges_are_read_with_their_dashes(
    text: str, start: datetime, end: datetime | None
) -> None:
    window = parse_maintenance(text, now=NOW)
    assert window.model_id == text.rsplit("@", 1)[0]
    assert (window.start, window.end) == (start, end)


@pytest.mark.parametrize(
    "text", ["primary@03:20-03:12", "primary@", "@now", "primary@later", "primary@-5m--15m"]
)
def test_maintenance_that_is_not_a_range_is_refused(text: str) -> None:
    with pytest.raises(WhatIfInputError, match="--maintenance"):
        parse_maintenance(text, now=NOW)


def test_events_of_a_newer_version_are_skipped_or_refused(
    run_cli: Run, demo_log: Path, tmp_path: Path
) -> None:
    path = tmp_path / "newer.sqlite3"
    shutil.copyfile(demo_log, path)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (last,) = conn.execute("SELECT max(seq) FROM events").fetchone()
        conn.execute(
            "INSERT INTO events (seq, type, at, writer, body) VALUES (?, ?, ?, ?, ?)",
            (last + 1, "brand_new_event", "2026-06-01T12:00:01+00:00", "v9",
             f'{{"seq":{last + 1},"type":"brand_new_event","at":"2026-06-01T12:00:01+00:00"}}'),
        )  # fmt: skip
    result = run_cli("whatif", path)
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 event(s) of types this version does not know" in result.stderr
    strict = run_cli("whatif", path, "--strict")
    assert strict.exit_code == 2
    assert "brand_new_event" in strict.stderr
    assert strict.stdout == ""


def test_a_postgresql_log_answers_as_the_sqlite_file_does(
    run_cli: Run, tmp_path: Path, pg_url: str
) -> None:
    from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415 - optional
        PostgresEventStore,
    )

    scenario = Scenario(
        spells={"primary": [Spell(20, 50, "server", 0.2)]},
        calls=[CallSpec(at=i * 1.3) for i in range(60)],
        actions=[Action(30.0, "secondary", True), Action(40.0, "secondary", False)],
    )
    path = tmp_path / "log.sqlite3"
    anyio.run(record_scenario, scenario, lambda: SQLiteEventStore(path, durability="buffered"))
    anyio.run(record_scenario, scenario, lambda: PostgresEventStore(pg_url, durability="buffered"))
    since = (START + timedelta(seconds=15)).isoformat()
    until = (START + timedelta(seconds=60)).isoformat()
    answers = []
    for log in (path, pg_url):
        result = run_cli(
            "whatif", log, "--without", "secondary", "--since", since, "--until", until,
            "--format", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1]
    assert answers[0]["calibration"]["ok"] is True
    assert answers[0]["what_if"]["calls_failed"] > 0
