"""`failover timeline`: every event on one line, filters that combine, JSON lines."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from typer.testing import Result

from devs.risks.multi_model_failover import SQLiteEventStore
from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    EngineStopped,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    RetryBudgetExhausted,
    StateChanged,
    decode,
)
from devs.risks.multi_model_failover.core.health import HealthState

Run = Callable[..., Result]


def stored(log: Path) -> list[Event]:
    with SQLiteEventStore(log, create=False) as store:
        return list(store.read())


def lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def test_one_line_per_event_in_order(run_cli: Run, incident_log: Path) -> None:
    events = stored(incident_log)
    out = lines(run_cli("timeline", incident_log))
    assert len(out) == len(events)
    assert [line[:23] for line in out] == [
        e.at.isoformat(sep=" ", timespec="milliseconds")[:23] for e in events
    ]
    assert "engine started" in out[0]
    assert "engine stopped" in out[-1]


def test_a_failover_line_names_both_models_and_the_error_kind(
    run_cli: Run, incident_log: Path
) -> None:
    failovers = [e for e in stored(incident_log) if isinstance(e, Failover)]
    out = lines(run_cli("timeline", incident_log, "--type", "failover"))
    assert len(out) == len(failovers) >= 3
    for line, event in zip(out, failovers, strict=True):
        assert event.call_id in line
        assert f"{event.from_model} -> {event.to_model}" in line
        assert event.reason.value in line


def test_a_backoff_line_shows_the_delay(run_cli: Run, incident_log: Path) -> None:
    backoffs = [e for e in stored(incident_log) if isinstance(e, Backoff)]
    out = lines(run_cli("timeline", incident_log, "--type", "backoff"))
    assert len(out) == len(backoffs) > 0
    assert all("wait " in line for line in out)


def test_filters_combine(run_cli: Run, incident_log: Path) -> None:
    events = stored(incident_log)
    since = datetime(2024, 5, 1, 3, 0, 30, tzinfo=UTC)
    until = datetime(2024, 5, 1, 3, 2, 30, tzinfo=UTC)
    expected = [
        e
        for e in events
        if isinstance(e, AttemptFailed) and e.model_id == "secondary" and since <= e.at <= until
    ]
    out = lines(
        run_cli(
            "timeline",
            incident_log,
            "--model",
            "secondary",
            "--type",
            "attempt_failed",
            "--since",
            "2024-05-01T03:00:30Z",
            "--until",
            "2024-05-01 03:02:30",
        )
    )
    assert len(out) == len(expected) > 0
    assert all("secondary" in line and "failed" in line for line in out)


def test_call_filter_shows_the_whole_story_of_one_call(run_cli: Run, incident_log: Path) -> None:
    failed = next(e for e in stored(incident_log) if isinstance(e, CallFailed))
    mine = [e for e in stored(incident_log) if getattr(e, "call_id", None) == failed.call_id]
    out = lines(run_cli("timeline", incident_log, "--call", failed.call_id))
    assert len(out) == len(mine)
    assert "call started" in out[0]
    assert "call failed (exhausted)" in out[-1]


def test_a_call_id_that_is_not_text_is_one_line_naming_the_option(
    run_cli: Run, incident_log: Path
) -> None:
    """A byte that is not UTF-8 on the command line reaches Python as a surrogate (found by
    tests/cli/test_fuzz_cli.py): no query can take it."""
    result = run_cli("timeline", incident_log, "--call", b"\xff".decode(errors="surrogateescape"))
    assert result.exit_code == 2
    assert result.stderr.startswith("failover: --call: ")
    assert "not valid text" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_filter_includes_failovers_to_that_model(run_cli: Run, incident_log: Path) -> None:
    out = lines(run_cli("timeline", incident_log, "--model", "tertiary", "--type", "failover"))
    assert out
    assert all("-> tertiary" in line for line in out)


def test_json_lines_are_the_stored_events(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("timeline", incident_log, "--json", "--type", "failover,state_changed")
    decoded = [decode(line) for line in lines(result)]
    expected = [e for e in stored(incident_log) if e.type in ("failover", "state_changed")]
    assert decoded == expected


def test_last_keeps_only_the_newest_matching_events(run_cli: Run, incident_log: Path) -> None:
    events = [e for e in stored(incident_log) if isinstance(e, CallSucceeded)]
    out = lines(run_cli("timeline", incident_log, "--type", "call_succeeded", "--last", 3))
    assert [line.split()[2] for line in out] == [e.call_id for e in events[-3:]]


def test_relative_times(run_cli: Run, incident_log: Path) -> None:
    everything = lines(run_cli("timeline", incident_log))
    assert lines(run_cli("timeline", incident_log, "--until", "-1m")) == everything
    assert lines(run_cli("timeline", incident_log, "--since", "-2h")) == []
    assert lines(run_cli("timeline", incident_log, "--since", "now")) == []


def test_a_window_with_no_events_prints_nothing(run_cli: Run, incident_log: Path) -> None:
    assert lines(run_cli("timeline", incident_log, "--since", "2030-01-01")) == []
    assert lines(run_cli("timeline", incident_log, "--until", "2000-01-01")) == []


def test_colour_on_a_terminal(run_cli: Run, incident_log: Path) -> None:
    result = run_cli(
        "timeline", incident_log, "--type", "failover", env={"FORCE_COLOR": "1", "COLUMNS": "200"}
    )
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout
    assert "failover" in result.stdout


def every_kind_of_event() -> list[Event]:
    at = datetime(2024, 5, 1, tzinfo=UTC)
    return [
        EngineStarted(at=at, models=("a", "b")),
        CallStarted(at=at, call_id="c1", order=("a", "b"), last_resort=True),
        AttemptStarted(at=at, call_id="c1", model_id="a", attempt=1),
        AttemptFailed(
            at=at,
            call_id="c1",
            model_id="a",
            attempt=1,
            latency=0.25,
            error_kind=ErrorKind.RATE_LIMITED,
            message="429 slow down",
        ),
        Backoff(at=at, call_id="c1", model_id="a", attempt=1, delay=1.5, retry_after=1.5),
        RetryBudgetExhausted(at=at, call_id="c1", model_id="a"),
        Failover(at=at, call_id="c1", from_model="a", to_model="b", reason=ErrorKind.RATE_LIMITED),
        AttemptSucceeded(at=at, call_id="c1", model_id="b", attempt=1, latency=72.0),
        CallSucceeded(at=at, call_id="c1", model_id="b", attempts=3, failovers=1, latency=75.0),
        CallFailed(
            at=at,
            call_id="c2",
            reason="deadline",
            error_kind=ErrorKind.DEADLINE,
            attempts=2,
            failovers=0,
            latency=60.0,
        ),
        CallCancelled(at=at, call_id="c3", model_id="a", attempts=1, latency=0.5),
        HealthProbe(
            at=at, model_id="a", ok=False, latency=5.0, error_kind=ErrorKind.TIMEOUT, message="t/o"
        ),
        HealthProbe(at=at, model_id="b", ok=True, latency=0.01),
        StateChanged(
            at=at,
            model_id="a",
            from_state=HealthState.HEALTHY,
            to_state=HealthState.UNHEALTHY,
            reason="probe failed",
        ),
        Maintenance(at=at, model_id="b", on=True, reason="upgrade", by="bob"),
        EngineStopped(at=at),
    ]


def test_every_event_type_reads_as_a_sentence(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "all.sqlite3"
    with SQLiteEventStore(log) as store:
        for event in every_kind_of_event():
            store.append(event)
    out = lines(run_cli("timeline", log))
    expected = [
        "engine started",
        "call started",
        "attempt 1",
        "attempt 1 failed",
        "backoff before attempt 2",
        "retry budget spent",
        "failover",
        "attempt 1 ok",
        "call succeeded",
        "call failed (deadline)",
        "call cancelled by caller",
        "probe failed",
        "probe ok",
        "healthy -> unhealthy",
        "maintenance on",
        "engine stopped",
    ]
    assert len(out) == len(expected)
    for line, phrase in zip(out, expected, strict=True):
        assert phrase in line
    assert "(last resort)" in out[1]
    assert "429 slow down" in out[3]
    assert "retry-after 1.50s" in out[4]
    assert "took 72.0s" in out[7]
    assert "upgrade (by bob)" in out[14]
    as_json = [msgspec.json.decode(line) for line in lines(run_cli("timeline", log, "--json"))]
    assert [doc["type"] for doc in as_json] == [e.type for e in every_kind_of_event()]
