"""Several processes, one log: nothing lost, no duplicate seq, each sees the others' events.

Three worker processes (``reliability_worker.py append``) start their calls on one SQLite file
at the same moment. Then a worker puts a model in maintenance while this process runs; the
next probe round here (``check_health()`` or the background loop) folds the operator's event
in before it probes, so the change is seen within one health-check interval.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections import Counter
from pathlib import Path

import anyio
import pytest
from reliability_support import (
    ScriptedClient,
    assert_one_terminal_each,
    eventually,
    read_all,
    spawn_worker,
    stored_seqs,
)

from devs.risks.multi_model_failover import HealthState, MultiModelFailover

PROCESSES = 3
CALLS_EACH = 150


def run_writers(log: Path) -> list[tuple[str, int]]:
    """Start the writers, let them go at once; return (writer, calls) per process."""
    procs = [
        spawn_worker("append", str(log), str(CALLS_EACH), str(seed)) for seed in range(PROCESSES)
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line == "ready\n", proc.stderr.read()  # type: ignore[union-attr]
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            _, writer, ok, failed = out.split()
            reports.append((writer, int(ok) + int(failed)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return reports


def test_three_processes_append_to_one_log_without_loss_or_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"
    creator = MultiModelFailover(  # create the log before the race
        {"erratic": ScriptedClient("erratic"), "steady": ScriptedClient("steady")},
        event_store=log,
    )
    creator.event_store.close()

    reports = run_writers(log)

    events = read_all(log)
    assert stored_seqs(log) == list(range(1, len(events) + 1))
    outcomes = assert_one_terminal_each(events)
    assert sum(outcomes.values()) == PROCESSES * CALLS_EACH
    with_writer = Counter(
        row for (row,) in _query(log, "SELECT writer FROM events_view WHERE type = 'call_started'")
    )
    assert with_writer == dict(reports)
    # The three writers really interleaved: their events alternate in the log.
    writers = [row for (row,) in _query(log, "SELECT writer FROM events ORDER BY seq")]
    switches = sum(1 for a, b in itertools.pairwise(writers) if a != b)
    assert switches >= PROCESSES


def _query(log: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(log)) as conn, conn:
        return conn.execute(sql).fetchall()


def _operator_in_another_process(log: Path, model: str) -> None:
    proc = spawn_worker("maintenance", str(log), model)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "done\n"


@pytest.mark.anyio
async def test_check_health_sees_another_processes_maintenance(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"
    fo = MultiModelFailover([ScriptedClient("erratic"), ScriptedClient("steady")], event_store=log)
    try:
        await anyio.to_thread.run_sync(_operator_in_another_process, log, "erratic")
        assert fo.states["erratic"] is HealthState.HEALTHY  # not folded in yet

        states = await fo.check_health()

        assert states["erratic"] is HealthState.MAINTENANCE
        assert fo.rotation == ["steady"]
        assert await fo.call("after") == "steady answered"
    finally:
        await fo.aclose()


@pytest.mark.anyio
async def test_background_loop_sees_maintenance_by_its_next_round(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"
    erratic, steady = ScriptedClient("erratic"), ScriptedClient("steady")
    interval = 0.2
    fo = MultiModelFailover([erratic, steady], health_check_interval=interval, event_store=log)
    async with fo:
        await anyio.to_thread.run_sync(_operator_in_another_process, log, "erratic")
        rounds_before = steady.probes
        await eventually(lambda: fo.states["erratic"] is HealthState.MAINTENANCE)
        # Seen by the round that was running when the event landed, or by the next one.
        assert steady.probes - rounds_before <= 2
        probes_in_maintenance = erratic.probes
        rounds_seen = steady.probes
        await eventually(lambda: steady.probes >= rounds_seen + 2)
        assert erratic.probes == probes_in_maintenance, "a model in maintenance was probed"


@pytest.mark.anyio
async def test_health_events_of_one_writer_reach_another(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"

    async def down() -> bool:
        await anyio.lowlevel.checkpoint()
        return False

    prober = MultiModelFailover(
        [ScriptedClient("erratic", probe=down), ScriptedClient("steady")], event_store=log
    )
    follower = MultiModelFailover(
        [ScriptedClient("erratic"), ScriptedClient("steady")], event_store=log
    )
    try:
        await prober.check_health()
        assert prober.states["erratic"] is HealthState.UNHEALTHY
        # Probe results are not waited for like a call's events: let the writer commit them.
        assert await anyio.to_thread.run_sync(prober.event_store.flush)  # type: ignore[attr-defined]

        assert await follower.follow() > 0

        assert follower.states["erratic"] is HealthState.UNHEALTHY
        assert follower.rotation == ["steady"]
    finally:
        await prober.aclose()
        await follower.aclose()
