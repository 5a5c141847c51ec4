"""Recorded runs for the what-if tests: a real engine, scripted models, any event store.

A ``Scenario`` says what the world did (each model's behaviour over time), what callers did
(when each call started, its own timeout, when its caller gave up) and what operators did;
``record_scenario`` plays it through a real ``FailoverEngine`` on the what-if's ``SimClock``
(virtual time, several calls in flight at once) into an event store. The engine's monotonic
clock is offset from its wall clock by ``clock_offset`` seconds, as a real process's is.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from devs.risks.multi_model_failover.core.engine import FailoverEngine
from devs.risks.multi_model_failover.core.errors import ModelError
from devs.risks.multi_model_failover.core.events import Maintenance
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.protocols import EventStore
from devs.risks.multi_model_failover.core.responses import ModelResponse, Usage
from devs.risks.multi_model_failover.core.whatif.simclock import INF, SimClock

START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spell:
    """From ``start`` to ``end`` (virtual seconds) the model answers this way: ``ok`` after
    ``latency``, fails with ``kind`` after ``latency`` (with ``retry_after``), or stays silent
    (``kind="silence"``). ``probe_ok``: what its health check says meanwhile."""

    start: float
    end: float
    kind: str = "ok"
    latency: float = 0.5
    retry_after: float | None = None
    probe_ok: bool | None = None
    rate: float = 1.0  # the share of calls that get this answer (the rest: ok)


@dataclass(frozen=True)
class CallSpec:
    """A caller: when it calls, its own timeout, when it gives up (None: never)."""

    at: float
    timeout: float | None = None
    cancel_after: float | None = None


@dataclass(frozen=True)
class Action:
    """An operator's maintenance action at ``at``; ``other_writer``: written by another
    process (the engine sees it when it next follows the log)."""

    at: float
    model_id: str
    on: bool
    other_writer: bool = False


@dataclass(frozen=True)
class Restart:
    """The engine closes and a new one starts at ``at``, with these policy keys over the
    scenario's."""

    at: float
    retry_policy: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] | None = None


@dataclass
class Scenario:
    """Everything a recorded run is made of; see the module docstring."""

    models: tuple[str, ...] = ("primary", "secondary")
    spells: Mapping[str, Sequence[Spell]] = field(default_factory=dict)
    calls: Sequence[CallSpec] = ()
    retry_policy: Mapping[str, Any] = field(default_factory=dict)
    health_policy: Mapping[str, Any] = field(default_factory=dict)
    probe_every: float | None = 30.0
    actions: Sequence[Action] = ()
    restarts: Sequence[Restart] = ()
    follow_every: float = 10.0
    clock_offset: float = 1234.567
    latency: Mapping[str, float] = field(default_factory=dict)
    seed: int = 7
    usage: bool = True
    # Seconds of real work (at most) each reading of the clock costs, as a process's code
    # takes time between two events of one instant: the log's stamps then differ by that.
    work: float = 0.0
    # Seconds (at most) by which calls and probe rounds start late: with ``work``, it keeps
    # the script's round numbers from putting two decisions a microsecond apart (the log's
    # stamps cannot order those; a real service's arrivals are not round).
    arrival_jitter: float = 0.0


class ScriptedModel:
    """Answers as the scenario's spells say at the current virtual time."""

    def __init__(self, name: str, scenario: Scenario, sim: SimClock, rng: random.Random) -> None:
        self.name = name
        self.spells = list(scenario.spells.get(name, ()))
        self.sim = sim
        self.rng = rng
        self.latency = scenario.latency.get(name, 0.4)
        self.usage = scenario.usage

    def _spell(self) -> Spell | None:
        now = self.sim.now
        for spell in self.spells:
            if spell.start <= now < spell.end:
                return spell
        return None

    async def call(self, prompt: str) -> ModelResponse:
        spell = self._spell()
        if spell is not None and spell.kind != "ok" and self.rng.random() < spell.rate:
            if spell.kind == "silence":
                await self.sim.sleep(10_000.0)  # cut by the engine's timeout
            await self.sim.sleep(spell.latency)
            if spell.kind == "timeout_error":
                raise TimeoutError("no answer from the provider")
            raise ModelError(
                f"{spell.kind} from {self.name}", kind=spell.kind, retry_after=spell.retry_after
            )
        latency = spell.latency if spell is not None else self.latency
        await self.sim.sleep(latency * self.rng.uniform(0.8, 1.2))
        usage = (
            Usage(input_tokens=self.rng.randint(10, 99), output_tokens=self.rng.randint(5, 50))
            if self.usage
            else Usage()
        )
        return ModelResponse(text="", model=self.name, usage=usage)

    async def health_check(self) -> bool:
        await self.sim.sleep(0.05)
        spell = self._spell()
        if spell is None:
            return True
        if spell.probe_ok is not None:
            return spell.probe_ok
        return spell.kind in ("ok", "rate_limited")


async def record_scenario(  # noqa: PLR0915 - one script, read top to bottom
    scenario: Scenario, open_store: Callable[[], EventStore]
) -> None:
    """Play ``scenario`` through real engines into the log ``open_store`` opens (once per
    engine, as each process opens it; once more for another process's operator actions)."""
    needs_other = any(a.other_writer for a in scenario.actions)
    other_store = open_store() if needs_other else None
    sim = SimClock(START)
    rng = random.Random(scenario.seed)
    ids = itertools.count(1)
    offset = scenario.clock_offset
    engines: list[FailoverEngine] = []

    def build(restart: Restart | None) -> FailoverEngine:
        models = restart.models if restart is not None and restart.models else scenario.models
        retry = {**scenario.retry_policy, **(restart.retry_policy if restart else {})}
        clients = {m: ScriptedModel(m, scenario, sim, rng) for m in models}
        engine = FailoverEngine(
            clients,
            retry,
            30,
            health_policy=dict(scenario.health_policy),
            event_store=open_store(),
            sleep=sim.sleep,
            clock=lambda: sim.now + offset + worked(),
            timer=sim,  # type: ignore[arg-type]  # the SimClock's scopes
            wall_clock=lambda: sim.utc() + timedelta(seconds=worked()),
            rng=random.Random(rng.random()),
            call_ids=lambda: f"call-{next(ids)}",
        )
        engine.log.load()
        return engine

    work = {"at": -1.0, "done": 0.0}
    jitter = random.Random(scenario.seed + 1)

    def worked() -> float:
        """The work done since virtual time last moved, a little more at each reading."""
        if work["at"] != sim.now:
            work["at"], work["done"] = sim.now, 0.0
        work["done"] += jitter.uniform(0, scenario.work)
        return work["done"]

    engines.append(build(None))

    async def one(spec: CallSpec) -> None:
        engine = engines[-1]
        cancel = (
            sim.scope(sim.now + spec.cancel_after)
            if spec.cancel_after is not None
            else contextlib.nullcontext()
        )
        with cancel, contextlib.suppress(ModelError):
            await engine.call_with_outcome("hello", timeout=spec.timeout)

    async def probe(model_id: str) -> None:
        engine = engines[-1]
        if model_id in engine.model_ids and engine.states[model_id] is not HealthState.MAINTENANCE:
            await engine.monitor._probe(engine.registry[model_id])

    def flush(engine: FailoverEngine) -> None:
        # A process commits its events within milliseconds; in virtual time everything here
        # happens at once, so an engine's events are flushed before another writer's or
        # another engine's turn (else their order in the log is the writer thread's race).
        engine.event_store.flush()  # type: ignore[attr-defined]

    async def act(action: Action) -> None:
        engine = engines[-1]
        if action.other_writer and other_store is not None:
            flush(engine)
            other_store.append(
                Maintenance(
                    at=sim.utc(), model_id=action.model_id, on=action.on, reason="ops", by="cli"
                )
            )
            other_store.flush()  # type: ignore[attr-defined]
        else:
            await engine.set_maintenance(action.model_id, action.on, reason="ops", by="api")

    async def follow() -> None:
        await engines[-1].follow()

    async def restart(spec: Restart) -> None:
        # The old process drains, stops, then the new one starts. (Two engines at once would
        # be a fleet: each sees the other's events only when it follows the log, and when it
        # does is not in the log.)
        old = engines[-1]
        while old.runner.ledger.in_flight:
            await sim.sleep(0.25)
        await old.aclose()
        engines.append(build(spec))

    end = max([c.at for c in scenario.calls] + [0.0]) + 5
    late = random.Random(scenario.seed + 2)
    for spec in scenario.calls:
        at = spec.at + late.uniform(0, scenario.arrival_jitter)
        sim.at(at, INF, partial(sim.spawn, one, spec))
    if scenario.probe_every is not None:
        for index in range(int(end // scenario.probe_every) + 1):
            at = index * scenario.probe_every + late.uniform(0, scenario.arrival_jitter)
            for model_id in scenario.models:
                sim.at(at, INF, partial(sim.spawn, probe, model_id))
    for action in scenario.actions:
        sim.at(action.at, INF, partial(sim.spawn, act, action))
    if other_store is not None:
        for index in range(int(end // scenario.follow_every) + 1):
            sim.at(index * scenario.follow_every + 0.001, INF, partial(sim.spawn, follow))
    for spec in scenario.restarts:
        sim.at(spec.at, INF, partial(sim.spawn, restart, spec))
    await sim.run()
    for engine in engines:
        if not engine.closed:
            await engine.aclose()
    if other_store is not None:
        other_store.close()
