"""`failover maintenance on|off`: an operator's event in the log, seen by a running engine."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import (
    HealthState,
    MultiModelFailover,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.core.events import Maintenance

Run = Callable[..., Result]


class Steady:
    """A model that always answers."""

    async def call(self, prompt: str) -> str:
        return prompt

    async def health_check(self) -> bool:
        return True


def maintenance_events(log: Path) -> list[Maintenance]:
    with SQLiteEventStore(log, create=False) as store:
        return [e for e in store.read() if isinstance(e, Maintenance)]


def test_on_then_off_is_recorded_with_who_and_why(run_cli: Run, incident_log: Path) -> None:
    before = len(maintenance_events(incident_log))
    on = run_cli(
        "maintenance", "on", "tertiary", "--log", incident_log, "--reason", "INC-7", "--by", "bob"
    )
    assert on.exit_code == 0, on.stderr
    assert "healthy -> maintenance" in on.stdout
    assert replay(incident_log).states["tertiary"].state is HealthState.MAINTENANCE
    off = run_cli("maintenance", "off", "tertiary", "--log", incident_log, "--reason", "fixed")
    assert off.exit_code == 0, off.stderr
    assert "maintenance -> healthy" in off.stdout
    events = maintenance_events(incident_log)[before:]
    assert [(e.on, e.reason) for e in events] == [(True, "INC-7"), (False, "fixed")]
    assert events[0].by == "bob"
    assert events[1].by  # the current user by default
    audit = run_cli("audit", incident_log, "--model", "tertiary")
    assert "INC-7" in audit.stdout
    assert "bob" in audit.stdout


@pytest.mark.anyio
async def test_a_running_engine_picks_it_up_without_a_restart(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite3"
    fo = MultiModelFailover(
        {"primary": Steady(), "backup": Steady()}, event_store=str(log), rng=random.Random(1)
    )
    try:
        await fo.call("warm up")
        result = run_cli("maintenance", "on", "primary", "--log", log, "--reason", "drain")
        assert result.exit_code == 0, result.stderr
        await fo.check_health()  # what the background loop runs every interval
        assert fo.states["primary"] is HealthState.MAINTENANCE
        assert fo.rotation == ["backup"]
    finally:
        await fo.aclose()


def test_off_for_a_model_not_in_maintenance_says_so(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("maintenance", "off", "primary", "--log", incident_log, "--reason", "noop")
    assert result.exit_code == 0
    assert "was not in maintenance" in result.stdout


def test_an_unknown_model_lists_the_known_ones(run_cli: Run, incident_log: Path) -> None:
    before = maintenance_events(incident_log)
    result = run_cli("maintenance", "on", "gpt-9", "--log", incident_log, "--reason", "x")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"failover: unknown model id 'gpt-9' in {incident_log} "
        "(known: primary, secondary, tertiary)"
    ]
    assert maintenance_events(incident_log) == before


def test_a_reason_is_required(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("maintenance", "on", "primary", "--log", incident_log, "--reason", " ")
    assert result.exit_code == 2
    assert "--reason" in result.stderr


def test_on_or_off_only(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("maintenance", "maybe", "primary", "--log", incident_log, "--reason", "x")
    assert result.exit_code == 2
    assert result.stderr.strip() == "failover: maintenance: 'maybe' is not one of on, off"


@pytest.mark.parametrize("option", ["--reason", "--by"])
def test_text_that_is_not_utf8_is_refused_not_lost(
    run_process: Callable[..., subprocess.CompletedProcess[str]],
    incident_log: Path,
    option: str,
) -> None:
    # A terminal in Latin-1 sends byte 0xff; Python hands it over as a lone surrogate, which
    # the log cannot store: the command used to report "recorded" while the event was dropped.
    before = len(maintenance_events(incident_log))
    args = {"--reason": "key rotation", "--by": "alice", option: "caf\udcff"}
    result = run_process(
        "maintenance",
        "on",
        "primary",
        "--log",
        incident_log,
        *(x for kv in args.items() for x in kv),
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"failover: {option}: ")
    assert "UTF-8" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert len(maintenance_events(incident_log)) == before
