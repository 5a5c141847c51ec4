"""Reading a log that another process is still appending to, as `failover` processes."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import Metrics, SQLiteEventStore

from .conftest import failover_command

WRITER = Path(__file__).with_name("log_writer.py")
RunProcess = Callable[..., subprocess.CompletedProcess[str]]
Run = Callable[..., Result]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def live_log(tmp_path: Path) -> Iterator[Path]:
    """A log that a writer process keeps appending to while the test runs."""
    log, ready, stop = tmp_path / "live.sqlite3", tmp_path / "ready", tmp_path / "stop"
    writer = subprocess.Popen(  # noqa: S603 - our own test helper
        [sys.executable, str(WRITER), str(log), str(ready), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: ready.exists() or writer.poll() is not None, "the writer")
        assert writer.poll() is None, writer.communicate()
        yield log
    finally:
        stop.touch()
        _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors


def stored(log: Path) -> int:
    with SQLiteEventStore(log, create=False) as store:
        return store.count()


def seqs(output: str) -> list[int]:
    return [msgspec.json.decode(line)["seq"] for line in output.splitlines()]


def test_timeline_reads_a_consistent_prefix_while_another_process_writes(
    run_process: RunProcess, live_log: Path
) -> None:
    first = run_process("timeline", live_log, "--json")
    assert first.returncode == 0, first.stderr
    read = seqs(first.stdout)
    assert read == list(range(1, len(read) + 1))  # no gap, no duplicate, in order
    _wait_for(lambda: stored(live_log) > len(read), "more events")
    second = run_process("timeline", live_log)
    assert second.returncode == 0, second.stderr
    assert len(second.stdout.splitlines()) > len(read)


def test_metrics_grow_and_stay_coherent_while_another_process_writes(
    run_process: RunProcess, live_log: Path
) -> None:
    seen: list[Metrics] = []
    for _ in range(3):
        done = run_process("metrics", live_log, "--format", "json")
        assert done.returncode == 0, done.stderr
        seen.append(msgspec.json.decode(done.stdout, type=Metrics))
        time.sleep(0.2)
    for m in seen:
        finished = m.calls_succeeded + m.calls_failed + m.calls_cancelled
        assert finished <= m.calls <= finished + 1  # at most the call in flight
        assert m.failovers <= m.calls
        assert m.by_model["primary"].attempts >= m.failovers
    assert seen[0].calls <= seen[1].calls <= seen[2].calls
    assert seen[-1].calls > seen[0].calls
    prometheus = run_process("metrics", live_log, "--format", "prometheus")
    assert "failover_failovers_total" in prometheus.stdout


def test_every_reader_answers_during_writes(run_cli: Run, live_log: Path, tmp_path: Path) -> None:
    for args in (
        ["state", live_log],
        ["state", live_log, "--at", "-1s"],
        ["audit", live_log],
        ["timeline", live_log, "--type", "failover", "--last", "5"],
        ["report", live_log, "-o", tmp_path / "live.html"],
        ["verify", live_log, "--expect", "failover"],
    ):
        result = run_cli(*args)
        assert result.exit_code == 0, (args, result.stderr)


def test_follow_prints_events_as_they_are_committed(live_log: Path) -> None:
    follower = subprocess.Popen(  # noqa: S603 - our own command line
        [*failover_command(), "timeline", str(live_log), "--follow", "--json",
         "--type", "call_succeeded", "--last", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = msgspec.json.decode(lines.get(timeout=30))
        later = first
        deadline = time.monotonic() + 30
        while later["seq"] <= first["seq"] + 50 and time.monotonic() < deadline:
            later = msgspec.json.decode(lines.get(timeout=30))
        assert later["type"] == "call_succeeded"
        assert later["seq"] > first["seq"] + 50  # appended after the follower started
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)
        reader.join(timeout=30)  # it owns stdout until the end: no communicate() beside it
        assert follower.stderr is not None
        errors = follower.stderr.read()
        follower.stdout.close()
        follower.stderr.close()
    assert follower.returncode == 0, errors
    assert "Traceback" not in errors
