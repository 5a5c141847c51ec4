"""The what-if's clock: a closed world on virtual time, in a deterministic order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import anyio
import pytest

from devs.risks.multi_model_failover.core.whatif.simclock import (
    INF,
    SimClock,
    current_fiber,
)

pytestmark = pytest.mark.anyio

ORIGIN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_a_day_of_waiting_moves_only_virtual_time() -> None:
    sim = SimClock(ORIGIN)
    seen: list[float] = []

    async def wait() -> None:
        await sim.sleep(86_400)
        seen.append(sim())

    sim.at(10.0, INF, partial(sim.spawn, wait))
    await sim.run()
    assert seen == [86_410.0]
    assert sim.utc() == ORIGIN + timedelta(seconds=86_410)


async def test_happenings_at_one_instant_run_in_prio_order_each_to_its_next_wait() -> None:
    sim = SimClock(ORIGIN)
    order: list[str] = []

    async def task(name: str) -> None:
        order.append(f"{name} starts")
        await anyio.lowlevel.checkpoint()  # still running: nothing else starts meanwhile
        order.append(f"{name} waits")
        await sim.sleep_until(5.0, {"a": 3.0, "b": 1.0, "c": 2.0}[name])
        order.append(f"{name} wakes")

    for name, prio in (("a", 2.0), ("b", 1.0), ("c", 3.0)):
        sim.at(1.0, prio, partial(sim.spawn, task, name))
    await sim.run()
    assert order == [
        "b starts", "b waits", "a starts", "a waits", "c starts", "c waits",
        "b wakes", "c wakes", "a wakes",
    ]  # fmt: skip


async def test_a_scope_cancels_the_wait_at_its_deadline() -> None:
    sim = SimClock(ORIGIN)
    caught: list[tuple[bool, float]] = []

    async def task() -> None:
        with sim.move_on_after(2.5) as scope:
            await sim.sleep(100.0)
        caught.append((scope.cancelled_caught, sim()))
        with sim.move_on_after(5.0) as scope:
            await sim.sleep(1.0)
        caught.append((scope.cancelled_caught, sim()))

    sim.at(1.0, INF, partial(sim.spawn, task))
    await sim.run()
    assert caught == [(True, 3.5), (False, 4.5)]


async def test_a_scope_at_the_same_instant_as_a_wake_keeps_the_lower_prio() -> None:
    sim = SimClock(ORIGIN)
    outcomes: list[str] = []

    async def task(at: float, scope_prio: float) -> None:
        with sim.scope(at, scope_prio) as scope:
            await sim.sleep_until(at, 5.0)
            outcomes.append(f"woke at {sim():g}")
        if scope.cancelled_caught:
            outcomes.append(f"cut at {sim():g}")

    sim.at(0.0, INF, partial(sim.spawn, task, 2.0, 1.0))  # the scope comes first: cut
    sim.at(10.0, INF, partial(sim.spawn, task, 12.0, 9.0))  # the wake comes first
    await sim.run()
    assert outcomes == ["cut at 2", "woke at 12"]


async def test_retime_brings_a_sleep_forward() -> None:
    sim = SimClock(ORIGIN)
    woke: list[float] = []
    sleeping = []

    async def sleeper() -> None:
        sleeping.append(current_fiber())
        await sim.sleep(60.0)
        woke.append(sim())

    sim.at(0.0, INF, partial(sim.spawn, sleeper))
    sim.at(5.0, INF, lambda: sim.retime(sleeping[0], 7.0))
    await sim.run()
    assert woke == [7.0]


async def test_what_a_task_raises_ends_the_run() -> None:
    sim = SimClock(ORIGIN)

    async def broken() -> None:
        await sim.sleep(1.0)
        raise RuntimeError("a fault in the world")

    async def patient() -> None:
        await sim.sleep(1_000.0)

    sim.at(0.0, INF, partial(sim.spawn, patient))
    sim.at(0.0, INF, partial(sim.spawn, broken))
    with pytest.raises(RuntimeError, match="a fault in the world"):
        await sim.run()
