"""Injected time and the test mode: a whole incident, probes included, on a VirtualClock.

Every wait of the engine (backoff, probe rounds, follow rounds, timeouts) runs on the clock
it was given, so an hour of incident runs in milliseconds of real time.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

from devs.risks.multi_model_failover import (
    HealthState,
    MultiModelFailover,
    VirtualClock,
)

from .fakes import FakeModelClient, always, failing

pytestmark = pytest.mark.anyio


class Outage:
    """A model that is down between two virtual times, for calls and probes alike."""

    def __init__(self, clock: VirtualClock, down_from: float, down_until: float) -> None:
        self.clock = clock
        self.window = (down_from, down_until)

    def down(self) -> bool:
        return self.window[0] <= self.clock() < self.window[1]

    async def call(self, prompt: str) -> str:
        if self.down():
            raise RuntimeError("503 upstream down")
        return "from primary"

    async def health_check(self) -> bool:
        return not self.down()


async def test_an_hour_of_incident_with_probes_runs_in_virtual_time() -> None:
    clock = VirtualClock()
    primary = Outage(clock, 600, 1800)
    secondary = FakeModelClient(always("from secondary"))
    fo = MultiModelFailover(
        {"primary": primary, "secondary": secondary}, health_check_interval=30, clock=clock
    )
    answers: list[str] = []
    started = time.monotonic()
    async with clock.autojump(), fo:
        for _ in range(60):  # a call a minute, for an hour
            answers.append(await fo.call("hi"))
            await clock.sleep(60)
    real = time.monotonic() - started
    assert real < 5  # an hour of virtual time; typically a few hundred milliseconds
    assert clock() >= 3600
    events = list(fo.event_store.read())
    probes = Counter(e.model_id for e in events if e.type == "health_probe")  # type: ignore[union-attr]
    assert probes["primary"] >= 3600 / 30 - 1  # every round ran, on virtual time
    # The outage (10th to 30th minute) moved the traffic, and the recovery brought it back.
    assert answers[:10] == ["from primary"] * 10
    assert set(answers[11:29]) == {"from secondary"}
    assert answers[-5:] == ["from primary"] * 5
    assert fo.states["primary"] is HealthState.HEALTHY
    # Events are stamped with virtual wall-clock time.
    assert (events[-1].at - events[0].at).total_seconds() >= 3600


async def test_timeouts_run_on_the_virtual_clock() -> None:
    async def hang(prompt: str) -> str:
        await anyio.sleep_forever()
        return "never"

    clock = VirtualClock()
    fo = MultiModelFailover(
        {"hangs": FakeModelClient(hang), "ok": FakeModelClient(always("ok"))},
        {"attempt_timeout": 20, "max_attempts": 1},
        clock=clock,
    )
    started = time.monotonic()
    async with clock.autojump():
        outcome = await fo.call_with_outcome("hi")
        await fo.aclose()
    assert time.monotonic() - started < 2
    assert outcome.model_id == "ok"
    assert outcome.latency == pytest.approx(20)


async def test_backoff_waits_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    primary = FakeModelClient(failing("server"))
    fo = MultiModelFailover(
        {"primary": primary},
        {
            "max_attempts": 4,
            "base_delay": 10,
            "max_delay": 100,
            "jitter": "none",
            "call_budget": 600,
        },
        clock=clock,
    )
    async with clock.autojump():
        with pytest.raises(Exception, match="every model it tried failed"):
            await fo.call("hi")
        await fo.aclose()
    assert clock() == pytest.approx(10 + 20 + 40)


def test_virtual_time_never_goes_back() -> None:
    clock = VirtualClock(5)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    clock.advance(2.5)
    assert clock() == 7.5
    assert clock.utc().year == 2026
