"""A log a newer version wrote: commands print their normal output and one note on stderr;
``--strict`` makes such events an error; a damaged row is one line naming its seq (issue #12)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

RunProcess = Callable[..., subprocess.CompletedProcess[str]]
NOTE = (
    "note: skipped 1 event(s) of types this version does not know: brand_new_event "
    "(upgrade to read them)\n"
)
COMMANDS = [
    pytest.param(["metrics"], id="metrics"),
    pytest.param(["timeline"], id="timeline"),
    pytest.param(["report", "-o", "OUT"], id="report"),
]


def add_row(path: Path, body: str, type_: str = "brand_new_event") -> int:
    """Append a row with ``body`` (``{seq}`` filled in) after the last one; returns its seq."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (last,) = conn.execute("SELECT max(seq) FROM events").fetchone()
        seq = int(last) + 1
        conn.execute(
            "INSERT INTO events (seq, type, at, writer, body) VALUES (?, ?, ?, ?, ?)",
            (seq, type_, "2024-05-01T04:00:00+00:00", "v2", body.replace("{seq}", str(seq))),
        )
    return seq


NEWER = '{"seq":{seq},"type":"brand_new_event","at":"2024-05-01T04:00:00+00:00"}'


def run(
    run_process: RunProcess, args: list[str], log: Path, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    filled = [str(tmp / "report.html") if a == "OUT" else a for a in args[1:]]
    return run_process(args[0], log, *filled, *extra)


@pytest.mark.parametrize("args", COMMANDS)
def test_newer_events_are_skipped_with_one_note(
    run_process: RunProcess, incident_log: Path, tmp_path: Path, args: list[str]
) -> None:
    before = run(run_process, args, incident_log, tmp_path)
    add_row(incident_log, NEWER)
    result = run(run_process, args, incident_log, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == NOTE
    if args[0] != "report":  # the report names its own output file: compared below
        assert result.stdout == before.stdout


@pytest.mark.parametrize("args", COMMANDS)
def test_strict_refuses_newer_events(
    run_process: RunProcess, incident_log: Path, tmp_path: Path, args: list[str]
) -> None:
    seq = add_row(incident_log, NEWER)
    result = run(run_process, args, incident_log, tmp_path, "--strict")
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith(
        f"row seq={seq} is a 'brand_new_event' event, a type this version does not know "
        "(upgrade to read it)\n"
    )
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", COMMANDS)
def test_a_damaged_row_is_one_line_naming_its_seq(
    run_process: RunProcess, incident_log: Path, tmp_path: Path, args: list[str]
) -> None:
    body = '{"seq":{seq},"type":"call_started","at":"2024-05-01T04:00:00+00:00","call_id":7}'
    seq = add_row(incident_log, body, "call_started")
    result = run(run_process, args, incident_log, tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"row seq={seq} is not a valid event" in result.stderr
    assert "Traceback" not in result.stderr
