"""`failover verify`, and the installed `failover` command run as a separate process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

Run = Callable[..., Result]
RunProcess = Callable[..., subprocess.CompletedProcess[str]]


def test_verify_counts_across_logs(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    other.write_bytes(incident_log.read_bytes())
    ok = run_cli("verify", incident_log, other, "--expect", "failover", "--expect", "call_failed")
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.startswith("ok: 2 logs hold(s) ")
    assert "4 call_failed" in ok.stdout


def test_verify_min_fails_with_exit_1(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("verify", incident_log, "--expect", "call_failed", "--min", "3")
    assert result.exit_code == 1
    assert "expected events missing: call_failed (2 < 3)" in result.stderr


def test_verify_refuses_unknown_types(run_cli: Run, incident_log: Path) -> None:
    result = run_cli("verify", incident_log, "--expect", "kaboom")
    assert result.exit_code == 2
    assert "unknown event type(s): kaboom" in result.stderr


def test_the_installed_command(run_process: RunProcess, incident_log: Path, tmp_path: Path) -> None:
    help_text = run_process("--help")
    assert help_text.returncode == 0
    for command in ("timeline", "state", "metrics", "audit", "maintenance", "verify", "report",
                    "demo"):  # fmt: skip
        assert command in help_text.stdout
    timeline = run_process("timeline", incident_log, "--type", "failover")
    assert timeline.returncode == 0, timeline.stderr
    assert "primary -> secondary" in timeline.stdout
    assert "\x1b[" not in timeline.stdout  # plain text into a pipe
    state = run_process("state", incident_log, "--at", "2024-05-01T03:01:30Z")
    assert "unhealthy" in state.stdout
    missing = run_process("metrics", tmp_path / "missing.sqlite3")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert not (tmp_path / "missing.sqlite3").exists()


def test_a_closed_pipe_is_not_an_error(incident_log: Path) -> None:
    from .conftest import failover_command  # noqa: PLC0415

    reader = subprocess.Popen(  # noqa: S603 - our own command line
        [*failover_command(), "timeline", str(incident_log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    reader.stdout.readline()
    reader.stdout.close()  # like `| head -1`
    _, errors = reader.communicate(timeout=30)
    assert b"Traceback" not in errors
