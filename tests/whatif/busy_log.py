"""A busy service's day, written by the real engine: the log the what-if's speed is measured on.

Calls arrive at random (``rate`` a second, several in flight at once) on three models for
``hours`` of virtual time, run on the what-if's own ``SimClock``: the primary has a few bad
spells (rate limits, 503s, silences), probe rounds run every 30 s, an operator takes the
secondary out for a while. Usage: ``python busy_log.py LOG [HOURS] [RATE]`` (about a million
events for 24 hours at 3 calls a second).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio

from devs.risks.multi_model_failover.core.engine import FailoverEngine
from devs.risks.multi_model_failover.core.errors import ErrorKind, ModelError
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.responses import ModelResponse, Usage
from devs.risks.multi_model_failover.core.whatif.simclock import SimClock
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

START = datetime(2026, 3, 2, tzinfo=UTC)
HOUR = 3600.0


class Spells:
    """When the primary misbehaves, and how: (from, to, mode) in virtual seconds."""

    def __init__(self, hours: float, rng: random.Random) -> None:
        self.spells: list[tuple[float, float, str]] = []
        for hour in range(int(hours)):
            if rng.random() < 0.3:
                begin = (hour + rng.random()) * HOUR
                mode = rng.choice(("rate_limited", "down", "wobbly"))
                self.spells.append((begin, begin + rng.uniform(120, 900), mode))

    def mode(self, now: float) -> str:
        for begin, end, mode in self.spells:
            if begin <= now < end:
                return mode
        return "ok"


class Model:
    """A simulated model: answers after a lognormal latency, or fails as the spell says."""

    def __init__(
        self, name: str, sim: SimClock, rng: random.Random, latency: float, spells: Spells | None
    ) -> None:
        self.name, self.sim, self.rng, self.latency, self.spells = name, sim, rng, latency, spells

    def _mode(self) -> str:
        return self.spells.mode(self.sim.now) if self.spells is not None else "ok"

    async def call(self, prompt: str) -> ModelResponse:
        mode, rng = self._mode(), self.rng
        if mode == "rate_limited" and rng.random() < 0.7:
            await self.sim.sleep(0.05)
            raise ModelError("429 Too Many Requests", kind=ErrorKind.RATE_LIMITED, retry_after=1.0)
        if mode == "down":
            await self.sim.sleep(0.2 if rng.random() < 0.8 else 60.0)  # 60 s: a silence
            raise ModelError("503 Service Unavailable", kind=ErrorKind.SERVER)
        if mode == "wobbly" and rng.random() < 0.4:
            await self.sim.sleep(0.3)
            raise ModelError("502 Bad Gateway", kind=ErrorKind.SERVER)
        await self.sim.sleep(rng.lognormvariate(0, 0.4) * self.latency)
        usage = Usage(input_tokens=rng.randint(50, 400), output_tokens=rng.randint(20, 300))
        return ModelResponse(text="", model=self.name, usage=usage)

    async def health_check(self) -> bool:
        await self.sim.sleep(0.05)
        return self._mode() != "down"


async def write(path: Path, hours: float = 24.0, rate: float = 3.0, seed: int = 1) -> int:
    """Write the busy log at ``path``; returns the number of calls."""
    rng = random.Random(seed)
    sim = SimClock(START)
    spells = Spells(hours, rng)
    clients = {
        "primary": Model("primary", sim, rng, 0.6, spells),
        "secondary": Model("secondary", sim, rng, 1.1, None),
        "tertiary": Model("tertiary", sim, rng, 1.6, None),
    }
    store = SQLiteEventStore(path, durability="buffered")
    ids = itertools.count(1)
    engine = FailoverEngine(
        clients,
        {"max_attempts": 2, "base_delay": 0.5, "max_delay": 4, "attempt_timeout": 20},
        30,
        health_policy={"unhealthy_after": 3},
        event_store=store,
        sleep=sim.sleep,
        clock=sim,
        timer=sim,
        wall_clock=sim.utc,
        rng=random.Random(seed + 1),
        call_ids=lambda: f"busy-{next(ids)}",
    )
    engine.log.load()
    end = hours * HOUR

    async def one_call() -> None:
        with contextlib.suppress(ModelError):
            await engine.call_with_outcome("summarise this ticket")

    async def probe(model_id: str) -> None:
        # One probe per task: check_health's task group would wait outside the clock.
        if engine.states[model_id] is not HealthState.MAINTENANCE:
            await engine.monitor._probe(engine.registry[model_id])

    calls = 0
    t = 0.0
    while t < end:
        t += rng.expovariate(rate)
        sim.at(t, float("inf"), partial(sim.spawn, one_call))
        calls += 1
    for t_probe in range(0, int(end), 30):
        for model_id in clients:
            sim.at(float(t_probe), float("inf"), partial(sim.spawn, probe, model_id))
    maintenance_at = end * 0.6
    sim.at(
        maintenance_at,
        float("inf"),
        partial(
            sim.spawn,
            partial(engine.set_maintenance, "secondary", True, reason="key rotation", by="ops"),
        ),
    )
    sim.at(
        maintenance_at + 1800,
        float("inf"),
        partial(
            sim.spawn,
            partial(engine.set_maintenance, "secondary", False, reason="rotated", by="ops"),
        ),
    )
    await sim.run()
    await engine.aclose()
    return calls


if __name__ == "__main__":
    target = Path(sys.argv[1])
    began = time.perf_counter()
    count = anyio.run(
        write,
        target,
        float(sys.argv[2]) if len(sys.argv) > 2 else 24.0,
        float(sys.argv[3]) if len(sys.argv) > 3 else 3.0,
    )
    print(f"{count} calls in {time.perf_counter() - began:.1f}s")
