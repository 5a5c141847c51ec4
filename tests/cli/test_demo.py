"""`failover demo`: the scripted incident writes a real log and explains it."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
from rich.console import Console
from typer.testing import Result

from devs.risks.multi_model_failover import HealthState, SQLiteEventStore, replay
from devs.risks.multi_model_failover.adapters.cli.demo import DURATION, play
from devs.risks.multi_model_failover.adapters.cli.render import Output
from devs.risks.multi_model_failover.core.events import EngineStarted, Maintenance

Run = Callable[..., Result]


def test_the_demo_tells_the_story_and_writes_the_log(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "demo" / "events.sqlite3"
    result = run_cli("demo", "--log", log)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for phrase in (
        "the primary starts rate-limiting",
        "the secondary takes over",
        "the primary recovers",
        "maintenance",
        "failovers (",
        "model states at the end of the log",
        "per model",
        "Try next on this log",
        f"failover report {log} -o incident.html",
    ):
        assert phrase in out, phrase
    snapshot = replay(log)
    assert snapshot.metrics.failovers > 0
    assert snapshot.metrics.calls_succeeded > 100
    assert {a.action for a in snapshot.audit} >= {"maintenance_on", "maintenance_off"}
    with SQLiteEventStore(log, create=False) as store:
        events = list(store.read())
    # Virtual time: twenty realistic minutes of wall-clock time, ending about now.
    span = events[-1].at - events[0].at
    assert DURATION - 60 <= span.total_seconds() <= DURATION + 120
    assert abs((datetime.now(UTC) - events[-1].at).total_seconds()) < 600
    assert sum(isinstance(e, Maintenance) for e in events) == 2


def test_the_suggested_commands_work(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    out = run_cli("demo", "--log", log).stdout
    suggested = [
        line.strip().split("    #")[0].split()
        for line in out.split("Try next on this log")[1].splitlines()[1:]
        if line.strip().startswith("failover ")
    ]
    assert len(suggested) >= 6
    for command in suggested:
        args = [a.strip("'") for a in command[1:]]
        if args[0] == "report":
            args[args.index("-o") + 1] = str(tmp_path / "incident.html")
        if args[0] == "maintenance":
            args = [*args[: args.index("--reason") + 1], "try it", "--by", "you"]
        result = run_cli(*args)
        assert result.exit_code == 0, (command, result.stderr)
        assert result.stdout.strip(), command
    mid_outage = next(c for c in suggested if "--at" in c and c[-1].endswith("Z"))
    doc = run_cli(*mid_outage[1:], "--json").stdout
    assert '"primary":{"model":"primary","state":"unhealthy"' in doc


def test_a_second_run_replaces_the_first(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    assert run_cli("demo", "--log", log).exit_code == 0
    first = replay(log).metrics.calls
    assert run_cli("demo", "--log", log).exit_code == 0
    assert replay(log).metrics.calls == first


def test_it_never_replaces_someone_elses_log(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "prod.sqlite3"
    with SQLiteEventStore(log) as store:
        store.append(EngineStarted(at=datetime.now(UTC), models=("gpt-4o", "claude")))
    result = run_cli("demo", "--log", log)
    assert result.exit_code == 2
    assert result.stderr.startswith("failover: ")
    assert "not written by the demo" in result.stderr
    assert replay(log).models == ("gpt-4o", "claude")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert run_cli("demo", "--log", notes).exit_code == 2
    assert notes.read_text() == "keep me"
    assert run_cli("demo", "--log", tmp_path).exit_code == 2


def test_the_same_seed_plays_the_same_incident(tmp_path: Path) -> None:
    end = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)
    quiet = Output(stream=io.StringIO())
    runs = []
    for name in ("a", "b"):
        log = tmp_path / f"{name}.sqlite3"
        anyio.run(lambda log=log: play(log, seed=11, out=quiet, end=end))
        snapshot = replay(log)
        runs.append((snapshot.metrics, [(a.at, a.model_id, a.action) for a in snapshot.audit]))
    assert runs[0] == runs[1]
    assert replay(tmp_path / "a.sqlite3").states["primary"].state is HealthState.HEALTHY


def test_on_a_terminal_it_shows_progress(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    out = Output(console=console, stream=stream)
    tally = anyio.run(lambda: play(tmp_path / "t.sqlite3", seed=7, out=out))
    assert tally.calls > 100
    assert "the primary goes down" in stream.getvalue()
    assert "\x1b[" in stream.getvalue()
