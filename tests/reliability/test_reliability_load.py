"""Load: thousands of concurrent calls over flaky clients, nothing lost, nothing leaked.

Three async fake clients with seeded 0-2 ms latencies: one fails often (every error kind,
``TimeoutError``, plain exceptions), one sometimes hangs until the attempt timeout cuts it,
one is mostly fine. The log is a file in ``process`` durability. Afterwards:

- every call ended in exactly one terminal event, and the one its caller saw;
- ``replay(log).metrics == fo.metrics()``;
- ``seq`` is unique and gap-free, 1..N;
- no task and no thread outlives ``aclose()`` (the async libraries' idle worker pools aside);
- the peak memory traced while every call is in flight stays under ``BYTES_PER_CALL`` per call.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import anyio
import pytest
from reliability_support import (
    FlakyClient,
    assert_one_terminal_each,
    own_threads,
    read_all,
    running_tasks,
    stored_seqs,
    threads_settled,
)

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    MultiModelFailover,
    replay,
)

pytestmark = pytest.mark.anyio

# The bound we promise: the whole engine (events queued for the writer, the call's own state,
# the client's coroutine, anyio's cancel scopes) costs less than this per call in flight.
BYTES_PER_CALL = 20 * 1024

POLICY = {
    "max_attempts": 2,
    "base_delay": 0.001,
    "max_delay": 0.004,
    "attempt_timeout": 0.25,
    "call_budget": 30,
}
# Keep the flaky clients in rotation so that every call keeps meeting faults.
HEALTH = {"degraded_after": 5, "unhealthy_after": 1_000_000}


def flaky_clients(seed: int) -> list[FlakyClient]:
    """The three clients of the load scenario, in configured order."""
    return [
        FlakyClient("erratic", seed, error_rate=0.5),
        FlakyClient("hanging", seed + 1, error_rate=0.1, hang_rate=0.1),
        FlakyClient("steady", seed + 2, error_rate=0.05),
    ]


async def run_load(path: Path, calls: int, *, seed: int) -> None:
    """Run ``calls`` concurrent calls and check every guarantee of the module docstring."""
    tasks_before = running_tasks()
    threads_before = own_threads()
    seen: dict[str, str] = {}

    fo = MultiModelFailover(
        flaky_clients(seed), POLICY, health_policy=HEALTH, event_store=path, durability="process"
    )

    async def one_call() -> None:
        try:
            outcome = await fo.call_with_outcome("load")
        except AllModelsFailedError as exc:
            seen[exc.call_id] = "call_failed"
        else:
            seen[outcome.call_id] = "call_succeeded"

    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        async with anyio.create_task_group() as group:
            for _ in range(calls):
                group.start_soon(one_call)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    live = fo.metrics()
    await fo.aclose()

    assert len(seen) == calls
    per_call = (peak - base) / calls
    assert per_call < BYTES_PER_CALL, f"{per_call:.0f} bytes per call in flight"

    events = read_all(path)
    outcomes = assert_one_terminal_each(events)
    assert outcomes["call_succeeded"] + outcomes["call_failed"] == calls
    terminal = {e.call_id: e.type for e in events if e.type in ("call_succeeded", "call_failed")}  # type: ignore[union-attr]
    assert terminal == seen, "a caller saw another outcome than the log records"
    # How many succeed depends on how saturated the loop is (an attempt's timeout includes
    # its wait for the loop); both outcomes must occur for the scenario to mean anything.
    assert outcomes["call_succeeded"] > 0
    assert outcomes["call_failed"] > 0
    assert live.calls == calls
    assert live.attempt_failures > 0
    assert live.failovers > 0
    assert live.failures_by_kind.get("timeout", 0) > 0, "the hanging client never timed out"

    assert replay(path).metrics == fo.metrics()
    assert stored_seqs(path) == list(range(1, len(events) + 1))

    assert running_tasks() == tasks_before, "a task outlived aclose()"
    assert not threads_settled(threads_before), "a thread outlived aclose()"


async def test_1000_concurrent_calls_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    await run_load(tmp_path / "load.sqlite3", 1_000, seed=1)


@pytest.mark.slow
async def test_10000_concurrent_calls_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    await run_load(tmp_path / "load.sqlite3", 10_000, seed=2)
