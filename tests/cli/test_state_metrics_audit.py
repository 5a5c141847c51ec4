"""`failover state`, `metrics` and `audit` answer from the log exactly as replay does."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import Result

from devs.risks.multi_model_failover import Metrics, SQLiteEventStore, replay
from devs.risks.multi_model_failover.core.projections import LATENCY_BUCKETS

Run = Callable[..., Result]
OUTAGE = "2024-05-01T03:01:30Z"  # the primary is down, the others serve
MAINTENANCE = "2024-05-01T03:03:30Z"  # the secondary is in maintenance


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def replay_until(log: Path, until: str) -> Metrics:
    instant = datetime.fromisoformat(until)
    with SQLiteEventStore(log, create=False) as store:
        return replay(e for e in store.read() if e.at <= instant).metrics


def test_state_now_matches_replay(run_cli: Run, incident_log: Path) -> None:
    doc = msgspec.json.decode(ok(run_cli("state", incident_log, "--json")))
    expected = replay(incident_log).states
    assert {m: row["state"] for m, row in doc["models"].items()} == {
        m: s.state.value for m, s in expected.items()
    }
    assert doc["at"] is None


def test_state_at_an_instant_says_since_when_and_why(run_cli: Run, incident_log: Path) -> None:
    out = ok(run_cli("state", incident_log, "--at", OUTAGE))
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "unhealthy" in rows["primary"]
    assert "no" in rows["primary"].split()[2]
    assert "2 failed call(s) in a row" in rows["primary"]
    assert "2024-05-01 03:00:42" in rows["primary"]  # since: when it became unhealthy
    assert "healthy" in rows["secondary"]
    assert "configured" in rows["tertiary"]


def test_state_during_maintenance_names_the_operator(run_cli: Run, incident_log: Path) -> None:
    doc = msgspec.json.decode(ok(run_cli("state", incident_log, "--at", MAINTENANCE, "--json")))
    secondary = doc["models"]["secondary"]
    assert secondary["state"] == "maintenance"
    assert secondary["in_rotation"] is False
    assert secondary["reason"] == "key rotation"
    assert secondary["by"] == "alice"
    assert secondary["cause"] == "maintenance"
    assert doc["at"] == "2024-05-01T03:03:30Z"


def test_state_before_the_log_began(run_cli: Run, incident_log: Path) -> None:
    out = ok(run_cli("state", incident_log, "--at", "2024-01-01"))
    assert "names no model" in out


def test_metrics_json_equals_replay(run_cli: Run, incident_log: Path) -> None:
    got = msgspec.json.decode(
        ok(run_cli("metrics", incident_log, "--format", "json")), type=Metrics
    )
    assert got == replay(incident_log).metrics
    assert got.failovers >= 3
    assert got.calls_failed == 2  # while every model is down (a trial call adds one)


def test_metrics_at_an_instant(run_cli: Run, incident_log: Path) -> None:
    out = ok(run_cli("metrics", incident_log, "--at", OUTAGE, "--format", "json"))
    assert msgspec.json.decode(out, type=Metrics) == replay_until(incident_log, OUTAGE)


def test_metrics_text_tables(run_cli: Run, incident_log: Path) -> None:
    out = ok(run_cli("metrics", incident_log))
    metrics = replay(incident_log).metrics
    assert f"failovers               {metrics.failovers}" in out
    assert "per model" in out
    assert "rate_limited" in out


def test_prometheus_exposition(run_cli: Run, incident_log: Path) -> None:
    text = ok(run_cli("metrics", incident_log, "--format", "prometheus"))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    metrics = replay(incident_log).metrics

    def value(family: str, sample: str, **labels: str) -> float:
        return next(
            s.value for s in families[family].samples if s.name == sample and s.labels == labels
        )

    assert value("failover_calls", "failover_calls_total") == metrics.calls
    assert value("failover_failovers", "failover_failovers_total") == metrics.failovers
    finished = "failover_calls_finished_total"
    assert value("failover_calls_finished", finished, outcome="failed") == metrics.calls_failed
    for model_id, figures in metrics.by_model.items():
        attempts = value("failover_attempts", "failover_attempts_total", model=model_id)
        assert attempts == figures.attempts
        histogram = "failover_attempt_latency_seconds"
        count = value(histogram, f"{histogram}_count", model=model_id)
        assert count == figures.latency_count
        assert value(histogram, f"{histogram}_bucket", model=model_id, le="+Inf") == count
    buckets = {
        s.labels["le"]
        for s in families["failover_attempt_latency_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    states = {
        (s.labels["model"], s.labels["state"])
        for s in families["failover_model_state"].samples
        if s.value == 1
    }
    assert states == {(m, s.state.value) for m, s in replay(incident_log).states.items()}
    kinds = {s.labels["kind"] for s in families["failover_attempt_errors"].samples}
    assert kinds == set(metrics.failures_by_kind)


def test_audit_lists_every_state_change_and_maintenance_action(
    run_cli: Run, incident_log: Path
) -> None:
    trail = replay(incident_log).audit
    entries = [
        msgspec.json.decode(line)
        for line in ok(run_cli("audit", incident_log, "--json")).splitlines()
    ]
    assert len(entries) == len(trail) >= 8
    assert [e["action"] for e in entries] == [a.action for a in trail]
    out = ok(run_cli("audit", incident_log))
    assert "maintenance on" in out
    assert "alice" in out
    assert "engine (health)" in out
    assert "2 failed call(s) in a row" in out


def test_audit_of_one_model(run_cli: Run, incident_log: Path) -> None:
    out = ok(run_cli("audit", incident_log, "--model", "tertiary"))
    body = [line for line in out.splitlines()[3:] if line]
    assert body
    assert all(" tertiary " in line for line in body)


def test_audit_of_a_quiet_log(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "quiet.sqlite3"
    SQLiteEventStore(log).close()
    assert "no state change" in ok(run_cli("audit", log))


def test_times_in_other_offsets_are_converted_to_utc(run_cli: Run, incident_log: Path) -> None:
    local = datetime(2024, 5, 1, 5, 1, 30, tzinfo=UTC).isoformat().replace("+00:00", "+02:00")
    in_utc = ok(run_cli("state", incident_log, "--at", OUTAGE, "--json"))
    assert ok(run_cli("state", incident_log, "--at", local, "--json")) == in_utc


def test_tables_on_a_terminal_print_reasons_as_written(run_cli: Run, incident_log: Path) -> None:
    result = run_cli(
        "state", incident_log, "--at", MAINTENANCE, env={"FORCE_COLOR": "1", "COLUMNS": "200"}
    )
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "key rotation [maintenance] by alice" in plain
