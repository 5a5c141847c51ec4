"""Every option that takes a time, through the real command line (issue #12): a time out of
range is one line on stderr and exit 2, and a bare clock time (the docs' ``--at 03:12``) is
that time today in UTC, or yesterday when today's is still to come."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

RunProcess = Callable[..., subprocess.CompletedProcess[str]]

# Every command and option that takes a time, as (arguments before the log, after it).
TIME_OPTIONS = [
    pytest.param(["timeline"], ["--since"], id="timeline-since"),
    pytest.param(["timeline"], ["--until"], id="timeline-until"),
    pytest.param(["state"], ["--at"], id="state-at"),
    pytest.param(["metrics"], ["--at"], id="metrics-at"),
    pytest.param(["report"], ["-o", "OUT", "--since"], id="report-since"),
    pytest.param(["report"], ["-o", "OUT", "--until"], id="report-until"),
]
OUT_OF_RANGE = ["-999999999d", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


def _args(before: list[str], log: Path, after: list[str], value: str, tmp: Path) -> list[object]:
    return [*before, log, *(tmp / "report.html" if a == "OUT" else a for a in after), value]


@pytest.mark.parametrize(("before", "after"), TIME_OPTIONS)
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_a_time_out_of_range_is_one_line_and_exit_2(
    run_process: RunProcess,
    incident_log: Path,
    tmp_path: Path,
    before: list[str],
    after: list[str],
    value: str,
) -> None:
    result = run_process(*_args(before, incident_log, after, value, tmp_path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"failover: {after[-1]}: ")
    assert value in lines[0]
    assert "out of range" in lines[0]
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(("before", "after"), TIME_OPTIONS)
def test_a_bare_clock_time_is_accepted(
    run_process: RunProcess,
    incident_log: Path,
    tmp_path: Path,
    before: list[str],
    after: list[str],
) -> None:
    result = run_process(*_args(before, incident_log, after, "03:12", tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_state_at_a_clock_time_looks_at_the_most_recent_one(
    run_process: RunProcess, incident_log: Path
) -> None:
    # A minute ago as a clock time: today's (or, just after midnight, yesterday's) instant.
    instant = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=0, microsecond=0)
    result = run_process("state", incident_log, "--at", instant.strftime("%H:%M"), "--json")
    assert result.returncode == 0, result.stderr
    assert f'"at":"{instant.strftime("%Y-%m-%dT%H:%M:00Z")}"' in result.stdout


def test_the_help_explains_clock_times(run_process: RunProcess) -> None:
    for command in ("timeline", "state", "metrics", "report"):
        help_text = " ".join(run_process(command, "--help", env={"COLUMNS": "200"}).stdout.split())
        assert "03:12" in help_text, command
        assert "yesterday" in help_text, command


@pytest.mark.parametrize(
    ("since", "until"),
    [("0001-01-01", "9999-12-31T23:59:59.999999"), ("0001-01-01", None), (None, "9999-12-31")],
    ids=["both-ends", "from-year-1", "to-year-9999"],
)
def test_a_report_over_the_widest_window_stays_small(
    run_process: RunProcess,
    incident_log: Path,
    tmp_path: Path,
    since: str | None,
    until: str | None,
) -> None:
    page = tmp_path / "report.html"
    window = [*(["--since", since] if since else []), *(["--until", until] if until else [])]
    result = run_process("report", incident_log, "-o", page, *window)
    assert result.returncode == 0, result.stderr
    html = page.read_text(encoding="utf-8")
    assert len(html) < 200_000
    assert 2 <= html.count('class="tick"') <= 12
