"""Crash safety: a process running calls is killed with SIGKILL at random moments.

A worker process (``reliability_worker.py calls``) runs calls from 8 concurrent tasks and
prints each call's id once ``call()`` has returned to it. The parent kills it with SIGKILL
after a seeded random number of answers plus a seeded random delay. Afterwards:

- ``process`` and ``power``: the log opens, replays without error, ``seq`` is gap-free, and
  every call whose id was printed has all of its events: ``call_started``, one
  ``attempt_started`` per attempt counted and ``call_succeeded``;
- ``buffered``: the log opens and replays without error (losing the last events is allowed).

Power loss itself cannot be simulated here; ``power`` is checked against the same crash.
"""

from __future__ import annotations

import queue
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from reliability_support import read_all, spawn_worker, stored_seqs

from devs.risks.multi_model_failover import replay
from devs.risks.multi_model_failover.core.events import AttemptStarted, CallSucceeded

QUICK_RUNS = 3
SLOW_RUNS = 20
START_TIMEOUT = 30.0


class Lines:
    """Reads a process's stdout on a thread so that the parent can wait with a timeout."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)
        self.lines.put("")  # end of stream

    def next(self, timeout: float) -> str:
        """The next complete line ('' at end of stream)."""
        return self.lines.get(timeout=timeout)

    def rest(self) -> list[str]:
        """Everything else the process wrote, once its stdout has closed."""
        self._thread.join(timeout=START_TIMEOUT)
        found = []
        while not self.lines.empty():
            found.append(self.lines.get())
        return found


def kill_at_random(log: Path, durability: str, rng: random.Random) -> list[str]:
    """Run the worker, SIGKILL it at a random moment; return the call ids it printed."""
    proc = spawn_worker("calls", str(log), durability, str(rng.randrange(1_000_000)))
    try:
        lines = Lines(proc.stdout)
        first = lines.next(START_TIMEOUT)
        assert first == "ready\n", f"worker failed: {first!r} {proc.stderr.read()!r}"  # type: ignore[union-attr]
        printed: list[str] = []
        for _ in range(rng.randrange(0, 80)):
            line = lines.next(START_TIMEOUT)
            assert line, f"worker ended early: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            printed.append(line)
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=START_TIMEOUT) == -signal.SIGKILL
        printed += lines.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    # A line cut by the kill has no newline: its call never returned.
    return [line.strip() for line in printed if line.endswith("\n") and line.strip()]


def check_nothing_returned_was_lost(log: Path, printed: list[str]) -> None:
    """Every printed call has its start, its attempts and its success in the log."""
    events = read_all(log)
    assert stored_seqs(log) == list(range(1, len(events) + 1))
    started = {e.call_id for e in events if e.type == "call_started"}  # type: ignore[union-attr]
    succeeded = {e.call_id: e for e in events if isinstance(e, CallSucceeded)}
    attempts = Counter(e.call_id for e in events if isinstance(e, AttemptStarted))
    missing = [cid for cid in printed if cid not in succeeded]
    assert not missing, f"{len(missing)} returned call(s) missing from the log: {missing[:5]}"
    for cid in printed:
        assert cid in started
        assert attempts[cid] == succeeded[cid].attempts


def crash_repeatedly(tmp_path: Path, durability: str, runs: int, seed: int) -> None:
    """Kill ``runs`` workers one after the other, all on the same log."""
    rng = random.Random(seed)
    log = tmp_path / f"crash-{durability}.sqlite3"
    returned: list[str] = []
    for _ in range(runs):
        returned += kill_at_random(log, durability, rng)
        replay(log)  # opens and replays without error after every kill
        if durability != "buffered":
            check_nothing_returned_was_lost(log, returned)
    assert returned, "the workers were never killed after a call returned"


@pytest.mark.parametrize("durability", ["process", "power", "buffered"])
def test_sigkill_loses_no_returned_call(tmp_path: Path, durability: str) -> None:
    crash_repeatedly(tmp_path, durability, QUICK_RUNS, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["process", "power", "buffered"])
def test_sigkill_20_times_loses_no_returned_call(tmp_path: Path, durability: str) -> None:
    crash_repeatedly(tmp_path, durability, SLOW_RUNS, seed=6)
