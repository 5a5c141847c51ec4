"""Recovery (issue 14, item 1): an unhealthy model is probed sooner, and real calls may try it
(half-open trials), so a model that recovers serves again within about two seconds with the
default settings, and never before it has recovered.

Everything runs on a ``VirtualClock`` (the engine's own probe loop included).
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    HealthState,
    ModelError,
    MultiModelFailover,
    VirtualClock,
    replay,
)

from .fakes import FakeModelClient, always

pytestmark = pytest.mark.anyio

# Buffered: a call then never waits for the writer thread, whose real-time hand-off could let
# the virtual clock jump ahead of a call (``VirtualClock.autojump``'s one limit).
BUFFERED = "buffered"


class Outage:
    """Down (503) between two virtual times, for calls and probes alike; counts both."""

    def __init__(self, clock: VirtualClock, down_from: float, down_until: float) -> None:
        self.clock = clock
        self.window = (down_from, down_until)
        self.calls: list[float] = []
        self.probes: list[float] = []
        self.inside = 0
        self.most_inside = 0

    def down(self) -> bool:
        return self.window[0] <= self.clock() < self.window[1]

    async def call(self, prompt: str) -> str:
        self.calls.append(self.clock())
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.clock.sleep(0.05)
            if self.down():
                raise ModelError("HTTP 503", kind="server")
            return "from primary"
        finally:
            self.inside -= 1

    async def health_check(self) -> bool:
        self.probes.append(self.clock())
        if self.down():
            raise ModelError("HTTP 503", kind="server")
        return True


def _events(fo: MultiModelFailover, kind: str) -> list[Any]:
    return [e for e in fo.event_store.read() if e.type == kind]


async def _calls_every(fo: MultiModelFailover, clock: VirtualClock, gap: float, until: float):  # type: ignore[no-untyped-def]
    """(time of the answer, serving model) of a call every ``gap`` seconds until ``until``."""
    served: list[tuple[float, str]] = []
    while clock() < until:
        outcome = await fo.call_with_outcome("hi")
        served.append((clock(), outcome.model_id))
        await clock.sleep(gap)
    return served


async def test_a_recovered_model_serves_again_within_two_seconds_never_before() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 10, 70)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        served = await _calls_every(fo, clock, 0.2, 80)
    by_primary = [t for t, model in served if model == "primary"]
    assert all(t < 10 or t >= 70 for t in by_primary), "served before it recovered"
    first_back = min(t for t in by_primary if t >= 70)
    assert first_back - 70 <= 2.0
    assert fo.states["primary"] is HealthState.HEALTHY
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_trials_and_probes_do_not_hammer_a_model_that_stays_down() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 0, 10_000)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        await clock.sleep(0.5)  # its first probe failed: unhealthy
        assert fo.states["primary"] is HealthState.UNHEALTHY
        primary.most_inside = 0
        async with anyio.create_task_group() as group:
            # Five callers, each calling every 0.2 s for 40 s.
            async def caller() -> None:
                while clock() < 40:
                    assert await fo.call("hi") == "from secondary"
                    await clock.sleep(0.2)

            for _ in range(5):
                group.start_soon(caller)
    trials = [e for e in _events(fo, "attempt_started") if e.trial]
    # One trial at a time, each at least trial_after (1 s) after the last failure: at most one
    # call a second pays a failed attempt, out of twenty-five.
    assert primary.most_inside == 1
    assert 15 <= len(trials) <= 40
    calls = primary.calls
    assert min(b - a for a, b in itertools.pairwise(calls)) >= 1.0
    # Probes back off while it stays down: 1, 2, 4, 8, 16 s (then the 30 s interval).
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(primary.probes)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0]


async def test_an_unhealthy_model_is_probed_after_a_second_then_less_and_less() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 0, 100)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("b"))}, clock=clock
    )
    async with clock.autojump(), fo:
        await clock.sleep(200)
    times = primary.probes
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert times[0] == 0  # probed at start: failed, unhealthy
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    # Back at 100 s: the probe at 121 s brings it back, then every 30 s.
    recovered = _events(fo, "state_changed")[-1]
    assert recovered.to_state == "healthy"
    assert recovered.reason == "probe succeeded"
    assert gaps[-1] == 30.0


async def test_a_model_turned_unhealthy_by_calls_is_probed_a_second_later() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 5, 1_000)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("b"))},
        health_policy={"trial_calls": 0},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        await clock.sleep(6)
        for _ in range(3):
            await fo.call("hi")
        assert fo.states["primary"] is HealthState.UNHEALTHY
        unhealthy_at = clock()
        await clock.sleep(1.5)
    assert [round(t - unhealthy_at, 2) for t in primary.probes if t > unhealthy_at] == [1.0]


async def test_a_trial_call_that_succeeds_brings_the_model_back() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 0, 3)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        health_check_interval=3600,
        health_policy={"recovery_probe_delay": 3600},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        await clock.sleep(0.5)  # the first probe failed: unhealthy
        assert fo.states["primary"] is HealthState.UNHEALTHY
        assert await fo.call("hi") == "from secondary"  # in its cool-down: not tried
        await clock.sleep(3)
        assert await fo.call("hi") == "from primary"  # its trial
    changed = _events(fo, "state_changed")[-1]
    assert (changed.to_state, changed.reason) == ("healthy", "trial call succeeded")
    trial = [e for e in _events(fo, "attempt_started") if e.trial]
    assert [e.model_id for e in trial] == ["primary"]
    started = _events(fo, "call_started")
    assert started[0].order == ("secondary",)
    assert started[1].order == ("primary", "secondary")


async def test_a_failed_trial_is_one_attempt_and_the_call_fails_over_at_once() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 0, 1_000)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        {"max_attempts": 3},
        health_check_interval=3600,
        health_policy={"recovery_probe_delay": 3600},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        await clock.sleep(2)
        assert await fo.call("hi") == "from secondary"
        assert await fo.call("hi") == "from secondary"  # cool-down restarted: not tried
    assert len(primary.calls) == 1
    assert [e.type for e in fo.event_store.read() if getattr(e, "call_id", None)][:6] == [
        "call_started",
        "attempt_started",
        "attempt_failed",
        "failover",
        "attempt_started",
        "attempt_succeeded",
    ]
    assert fo.states["primary"] is HealthState.UNHEALTHY


async def test_no_trials_when_turned_off() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 0, 1)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        health_check_interval=3600,
        health_policy={"recovery_probe_delay": 3600, "trial_calls": 0},
        clock=clock,
        durability=BUFFERED,
    )
    async with clock.autojump(), fo:
        await clock.sleep(5)
        answers = {await fo.call("hi") for _ in range(5)}
    assert answers == {"from secondary"}
    assert primary.calls == []
