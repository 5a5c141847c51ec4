"""Errors a person makes: one clear line on stderr, exit code 2, nothing created or changed."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import SQLiteEventStore

Run = Callable[..., Result]

# Every command that reads a log, as (arguments before the log, arguments after it).
READERS = [
    pytest.param(["timeline"], [], id="timeline"),
    pytest.param(["state"], [], id="state"),
    pytest.param(["metrics"], [], id="metrics"),
    pytest.param(["audit"], [], id="audit"),
    pytest.param(["verify"], ["--expect", "failover"], id="verify"),
    pytest.param(["report"], ["-o", "OUT"], id="report"),
    pytest.param(["maintenance", "on", "primary", "--log"], ["--reason", "x"], id="maintenance"),
]


def one_line(result: Result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("failover: ")
    return lines[0]


def invoke(run_cli: Run, before: list[str], log: Path, after: list[str], tmp: Path) -> Result:
    args = [str(tmp / "report.html") if a == "OUT" else a for a in after]
    return run_cli(*before, log, *args)


@pytest.mark.parametrize(("before", "after"), READERS)
def test_missing_file(run_cli: Run, tmp_path: Path, before: list[str], after: list[str]) -> None:
    log = tmp_path / "nowhere" / "events.sqlite3"
    line = one_line(invoke(run_cli, before, log, after, tmp_path))
    assert "does not exist" in line
    assert str(log) in line
    assert list(tmp_path.iterdir()) == []  # no log, no folder, no report


@pytest.mark.parametrize(("before", "after"), READERS)
def test_not_sqlite(run_cli: Run, tmp_path: Path, before: list[str], after: list[str]) -> None:
    log = tmp_path / "notes.txt"
    log.write_text("these are my notes\n" * 100)
    line = one_line(invoke(run_cli, before, log, after, tmp_path))
    assert "not an SQLite database" in line
    assert log.read_text() == "these are my notes\n" * 100


@pytest.mark.parametrize(("before", "after"), READERS)
def test_sqlite_but_not_an_event_log(
    run_cli: Run, tmp_path: Path, before: list[str], after: list[str]
) -> None:
    log = tmp_path / "app.db"
    with sqlite3.connect(log) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    line = one_line(invoke(run_cli, before, log, after, tmp_path))
    assert "not a failover event log" in line
    with sqlite3.connect(log) as conn:
        # The person's database is left exactly as it was: not even switched to WAL.
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    conn.close()


@pytest.mark.parametrize(("before", "after"), READERS)
def test_empty_file(run_cli: Run, tmp_path: Path, before: list[str], after: list[str]) -> None:
    log = tmp_path / "empty.sqlite3"
    log.touch()
    assert "empty file" in one_line(invoke(run_cli, before, log, after, tmp_path))
    assert log.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite3"]


@pytest.mark.parametrize(("before", "after"), READERS)
def test_newer_schema(run_cli: Run, tmp_path: Path, before: list[str], after: list[str]) -> None:
    log = tmp_path / "future.sqlite3"
    SQLiteEventStore(log).close()
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    line = one_line(invoke(run_cli, before, log, after, tmp_path))
    assert "schema version 99" in line
    assert "upgrade" in line


@pytest.mark.parametrize(
    "args",
    [
        ["timeline", "--since", "yesterday"],
        ["timeline", "--until", "15m"],
        ["state", "--at", "2024-13-45"],
        ["metrics", "--at", "-5 parsecs"],
        ["report", "--since", "soon", "-o", "never.html"],
    ],
)
def test_bad_time_expression(run_cli: Run, incident_log: Path, args: list[str]) -> None:
    line = one_line(run_cli(args[0], incident_log, *args[1:]))
    assert "bad time expression" in line
    assert "-15m" in line  # says what is accepted
    assert not Path("never.html").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["timeline", "LOG", "--model", "gpt-9"],
        ["audit", "LOG", "--model", "gpt-9"],
        ["maintenance", "on", "gpt-9", "--log", "LOG", "--reason", "x"],
    ],
)
def test_unknown_model_lists_the_known_ones(
    run_cli: Run, incident_log: Path, args: list[str]
) -> None:
    line = one_line(run_cli(*[incident_log if a == "LOG" else a for a in args]))
    assert line.endswith("unknown model id 'gpt-9' in " + str(incident_log) + " (known: "
                         "primary, secondary, tertiary)")  # fmt: skip


def test_unknown_model_in_an_empty_log(run_cli: Run, tmp_path: Path) -> None:
    log = tmp_path / "empty.sqlite3"
    SQLiteEventStore(log).close()
    line = one_line(run_cli("timeline", log, "--model", "primary"))
    assert "the log names no model yet" in line


def test_unknown_event_type(run_cli: Run, incident_log: Path) -> None:
    line = one_line(run_cli("timeline", incident_log, "--type", "failover,explosion"))
    assert "unknown event type(s): explosion" in line
    assert "state_changed" in line


def test_unknown_metrics_format(run_cli: Run, incident_log: Path) -> None:
    line = one_line(run_cli("metrics", incident_log, "--format", "xml"))
    assert line == "failover: --format: 'xml' is not one of text, json, prometheus"


def test_a_directory_is_not_a_log(run_cli: Run, tmp_path: Path) -> None:
    assert "directory" in one_line(run_cli("state", tmp_path))


def test_report_to_an_unwritable_place(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    line = one_line(run_cli("report", incident_log, "-o", tmp_path / "missing" / "r.html"))
    assert "cannot write" in line


@pytest.mark.parametrize(("before", "after"), READERS)
def test_an_empty_log_argument_is_named_as_such(
    run_process: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    before: list[str],
    after: list[str],
) -> None:
    args = [str(tmp_path / "report.html") if a == "OUT" else a for a in after]
    result = run_process(*before, "", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "failover: no event log named: the log argument is ''\n"
    assert list(tmp_path.iterdir()) == []


def test_a_huge_count_is_refused_not_a_traceback(
    run_process: Callable[..., subprocess.CompletedProcess[str]], incident_log: Path
) -> None:
    result = run_process("timeline", incident_log, "--last", str(10**30))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--last" in result.stderr


def test_the_demo_on_a_path_that_cannot_be_created(
    run_process: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    (tmp_path / "notes").write_text("mine")
    log = tmp_path / "notes" / "demo" / "events.sqlite3"
    result = run_process("demo", "--log", log)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"failover: cannot create {log}: ")
    assert "Not a directory" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    assert (tmp_path / "notes").read_text() == "mine"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
@pytest.mark.parametrize(("before", "after"), READERS)
def test_a_device_is_not_a_log(
    run_process: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    before: list[str],
    after: list[str],
) -> None:
    args = [str(tmp_path / "report.html") if a == "OUT" else a for a in after]
    result = run_process(*before, "/dev/null", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "failover: /dev/null is a device, pipe or socket, not an event log file\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("before", "after"), READERS)
def test_a_damaged_schema_version(
    run_cli: Run, tmp_path: Path, before: list[str], after: list[str]
) -> None:
    log = tmp_path / "damaged.sqlite3"
    SQLiteEventStore(log).close()
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    conn.close()
    line = one_line(invoke(run_cli, before, log, after, tmp_path))
    assert line == f"failover: {log}: meta.schema_version is 'one', not a whole number " + (
        "(the log is damaged)"
    )
