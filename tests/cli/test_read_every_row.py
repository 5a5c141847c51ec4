"""Every reading command reads every row it answers from: ``verify`` decodes what it counts,
``state`` and ``audit`` note (or, ``--strict``, refuse) events of unknown types, and
``timeline --follow`` goes on reading a log replaced at its path."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from devs.risks.multi_model_failover import SQLiteEventStore
from devs.risks.multi_model_failover.core.events import Maintenance

from .conftest import failover_command
from .test_newer_event_types import add_row

RunProcess = Callable[..., subprocess.CompletedProcess[str]]
RETIRED = '{"seq":{seq},"type":"model_retired","at":"2024-05-01T04:00:00+00:00"}'
NOTE = (
    "note: skipped 1 event(s) of types this version does not know: model_retired "
    "(upgrade to read them)\n"
)


def _refusal(seq: int) -> str:
    return (
        f"row seq={seq} is a 'model_retired' event, a type this version does not know "
        "(upgrade to read it)\n"
    )


def test_verify_refuses_a_corrupt_row_it_would_count(
    run_process: RunProcess, incident_log: Path
) -> None:
    with contextlib.closing(sqlite3.connect(incident_log)) as conn, conn:
        conn.execute("UPDATE events SET body = 'garbage' WHERE type = 'failover'")
        (first,) = conn.execute("SELECT min(seq) FROM events WHERE type = 'failover'").fetchone()
    result = run_process("verify", incident_log, "--expect", "failover")
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"row seq={first} is not a valid event" in result.stderr
    assert result.stdout == ""


def test_verify_notes_or_refuses_unknown_event_types(
    run_process: RunProcess, incident_log: Path
) -> None:
    seq = add_row(incident_log, RETIRED, "model_retired")
    result = run_process("verify", incident_log, "--expect", "failover")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert result.stderr == NOTE
    strict = run_process("verify", incident_log, "--expect", "failover", "--strict")
    assert strict.returncode == 2, strict.stderr
    assert strict.stderr.endswith(_refusal(seq))
    assert len(strict.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["state", "audit"])
def test_state_and_audit_note_or_refuse_unknown_event_types(
    run_process: RunProcess, incident_log: Path, command: str
) -> None:
    before = run_process(command, incident_log)
    seq = add_row(incident_log, RETIRED, "model_retired")
    result = run_process(command, incident_log)
    assert result.returncode == 0, result.stderr
    assert result.stderr == NOTE
    assert result.stdout == before.stdout
    strict = run_process(command, incident_log, "--strict")
    assert strict.returncode == 2, strict.stderr
    assert strict.stderr.endswith(_refusal(seq))
    assert len(strict.stderr.splitlines()) == 1


def _new_log(path: Path, reasons: list[str]) -> None:
    """A new log at ``path``, built beside it and renamed into place (never half written)."""
    side = path.with_name("new-" + path.name)
    store = SQLiteEventStore(side, writer="new")
    try:
        for reason in reasons:
            at = datetime.now(UTC)
            store.append(Maintenance(at=at, model_id="primary", on=True, reason=reason, by="bob"))
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    os.replace(side, path)


def test_follow_goes_on_reading_a_replaced_log(incident_log: Path) -> None:
    follower = subprocess.Popen(  # noqa: S603 - our own command line
        [*failover_command(), "timeline", str(incident_log), "--follow", "--json", "--last", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    reasons = [f"after the replacement {n}" for n in range(3)]
    seen: list[str] = []
    try:
        lines.get(timeout=30)  # the old log's last event: the follower is reading
        _new_log(incident_log, reasons)
        deadline = time.monotonic() + 15
        while len(seen) < len(reasons) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                event = msgspec.json.decode(lines.get(timeout=0.5))
                seen.append(event.get("reason", ""))
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(timeout=30)
        finally:
            follower.kill()  # no-op once it has ended
        reader.join(timeout=30)
        assert follower.stderr is not None
        errors = follower.stderr.read()
        follower.stdout.close()
        follower.stderr.close()
    assert seen == reasons, errors
    assert follower.returncode == 0, errors
    assert errors.count("\n") == 1, errors
    assert "was replaced" in errors
