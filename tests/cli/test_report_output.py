"""`failover report LOG -o FILE` never writes its page over an event log or a database
(found by the fuzz test: `report events.sqlite3 --output events.sqlite3` replaced the log)."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

RunProcess = Callable[..., subprocess.CompletedProcess[str]]


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("failover: ")
    return lines[0]


def test_the_report_is_not_written_over_its_own_log(
    run_process: RunProcess, incident_log: Path
) -> None:
    before = incident_log.read_bytes()
    line = _refused(run_process("report", incident_log, "-o", incident_log))
    assert str(incident_log) in line
    assert incident_log.read_bytes() == before
    # The same file under another name is the same file.
    alias = incident_log.parent / "." / incident_log.name
    _refused(run_process("report", incident_log, "--output", alias))
    assert incident_log.read_bytes() == before


def test_the_report_is_not_written_over_another_database(
    run_process: RunProcess, incident_log: Path, tmp_path: Path
) -> None:
    other = tmp_path / "app.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
    before = other.read_bytes()
    line = _refused(run_process("report", incident_log, "-o", other))
    assert "SQLite" in line
    assert other.read_bytes() == before


def test_an_earlier_report_is_replaced(
    run_process: RunProcess, incident_log: Path, tmp_path: Path
) -> None:
    page = tmp_path / "incident.html"
    page.write_text("an old report")
    result = run_process("report", incident_log, "-o", page)
    assert result.returncode == 0, result.stderr
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
