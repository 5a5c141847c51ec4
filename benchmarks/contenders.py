"""The contenders: our engine in every log mode, the hand-written floor, tenacity, LiteLLM.

Each contender has ``call(prompt)`` (what is timed), ``settle()`` (untimed, after each timed
value: drains the log so no backlog leaks into the next measurement), ``check(calls)`` (one
look before timing that the scenario did what it says) and ``close()``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
from fakes import ANSWER, RESPONSE, Scenario, no_sleep

from devs.risks.multi_model_failover import (
    HealthPolicy,
    MultiModelFailover,
    RetryPolicy,
    SQLiteEventStore,
)

FLOOR: Final = "floor"
TENACITY: Final = "tenacity"
LITELLM: Final = "litellm"
ENGINE_MODES: Final = ("memory", "buffered", "process", "power")
# A diagnostic contender: the engine with a store that keeps nothing, to show what the engine
# costs apart from its log.
NULL_LOG: Final = "no-log"
ATTEMPT_TIMEOUT: Final = 30.0
# The failing primary must stay in rotation for every call to fail over, and the retry budget
# must never refuse the scripted retry: both would change the path being measured.
HEALTH: Final = HealthPolicy(degraded_after=10**9, unhealthy_after=10**9)


def label(contender: str) -> str:
    """How a contender is named in the tables."""
    if contender == "memory":
        return "engine, :memory: log (default durability: process)"
    if contender == NULL_LOG:
        return "engine, no-op store (diagnostic: no log at all)"
    if contender in ENGINE_MODES:
        return f"engine, file log, {contender}"
    return {
        FLOOR: "hand-written floor",
        TENACITY: "tenacity AsyncRetrying",
        LITELLM: "LiteLLM Router (mock_response)",
    }[contender]


class NullStore:
    """An ``EventStore`` that counts appends and keeps nothing."""

    durability = "buffered"
    writer = "null"

    def __init__(self) -> None:
        self.appended = 0

    def append(self, event: object) -> int:
        self.appended += 1
        return self.appended

    async def wait_committed(self, ticket: int) -> None:
        return None

    def read(self, *, after: int = 0) -> Iterator[Any]:
        return iter(())

    def read_others(self, after: int) -> tuple[list[Any], int]:
        return [], after

    def last_seq(self) -> int:
        return 0

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class EngineContender:
    """``MultiModelFailover`` with an in-memory log or a file log in one durability mode."""

    def __init__(self, scenario: Scenario, mode: str, workdir: Path) -> None:
        store: str | NullStore | None = None
        durability = "process"
        if mode == NULL_LOG:
            store = NullStore()
        elif mode != "memory":
            store = os.fspath(workdir / f"{scenario.name}-{mode}-{id(self):x}.sqlite3")
            durability = mode
        self.scenario = scenario
        self.engine = MultiModelFailover(
            scenario.clients(),
            RetryPolicy(
                max_attempts=scenario.max_attempts,
                attempt_timeout=ATTEMPT_TIMEOUT,
                retry_budget_min_per_s=1e9,
            ),
            health_policy=HEALTH,
            event_store=store,
            durability=durability,
            sleep=no_sleep,
        )
        self.call = self.engine.call

    async def settle(self) -> None:
        store = self.engine.event_store
        if isinstance(store, SQLiteEventStore):
            store.flush()

    def check(self, calls: int) -> None:
        m = self.engine.metrics()
        s = self.scenario
        expected = (calls, calls, calls * s.attempts, calls * s.failovers, calls * s.retries)
        got = (m.calls, m.calls_succeeded, m.attempts, m.failovers, m.retries)
        assert got == expected, f"engine {s.name}: {got} != {expected}"

    async def close(self) -> None:
        await self.engine.aclose()


class FloorEvent(msgspec.Struct, frozen=True):
    """A small event object, as the floor records one."""

    type: str
    call_id: int
    model_id: str | None
    at: float


class Floor:
    """The least a failover loop with the same features can do.

    Tries the same clients in order, ``max_attempts`` each with the same no-op sleep between
    attempts, each attempt under its own ``asyncio.timeout``, and appends a small event object
    to a list at each point where the engine emits an event (4 per successful first attempt).
    """

    def __init__(self, scenario: Scenario) -> None:
        self.clients = scenario.clients()
        self.max_attempts = scenario.max_attempts
        self.events: list[FloorEvent] = []
        self._ids = itertools.count(1)
        self.scenario = scenario

    async def call(self, prompt: str) -> Any:
        events = self.events
        now = time.time
        call_id = next(self._ids)
        events.append(FloorEvent("call_started", call_id, None, now()))
        failed = False
        for client in self.clients:
            model_id = client.model_id
            if failed:
                events.append(FloorEvent("failover", call_id, model_id, now()))
            for attempt in range(1, self.max_attempts + 1):
                events.append(FloorEvent("attempt_started", call_id, model_id, now()))
                try:
                    async with asyncio.timeout(ATTEMPT_TIMEOUT):
                        response = await client.call(prompt)
                except Exception:
                    events.append(FloorEvent("attempt_failed", call_id, model_id, now()))
                    failed = True
                    if attempt < self.max_attempts:
                        events.append(FloorEvent("backoff", call_id, model_id, now()))
                        await no_sleep(0.0)
                    continue
                events.append(FloorEvent("attempt_succeeded", call_id, model_id, now()))
                events.append(FloorEvent("call_succeeded", call_id, model_id, now()))
                return response
        events.append(FloorEvent("call_failed", call_id, None, now()))
        raise RuntimeError("every client failed")

    async def settle(self) -> None:
        self.events.clear()

    def check(self, calls: int) -> None:
        s = self.scenario
        per_call = 2 + 2 * s.attempts + s.failovers + s.retries
        assert len(self.events) == calls * per_call, f"floor {s.name}: {len(self.events)}"

    async def close(self) -> None:
        self.events.clear()


class TenacityContender:
    """tenacity ``AsyncRetrying`` around the same clients: attempt n calls the n-th client of
    a plan (the primary twice to retry, the primary then the secondary to fail over)."""

    def __init__(self, scenario: Scenario) -> None:
        import tenacity  # noqa: PLC0415 - a benchmark-only dependency

        clients = scenario.clients()
        self.plan = clients if scenario.max_attempts == 1 else [clients[0], clients[0]]
        self.scenario = scenario
        self._tenacity = tenacity
        self._stop = tenacity.stop_after_attempt(2)
        self._wait = tenacity.wait_none()
        self.attempts = 0

    async def call(self, prompt: str) -> Any:
        plan = self.plan
        retrying = self._tenacity.AsyncRetrying(
            stop=self._stop, wait=self._wait, sleep=no_sleep, reraise=True
        )
        async for attempt in retrying:
            with attempt:
                self.attempts += 1
                return await plan[attempt.retry_state.attempt_number - 1].call(prompt)
        raise AssertionError("unreachable")

    async def settle(self) -> None:
        return None

    def check(self, calls: int) -> None:
        assert self.attempts == calls * self.scenario.attempts, f"tenacity: {self.attempts}"

    async def close(self) -> None:
        return None


def litellm_unavailable() -> str | None:
    """Why LiteLLM cannot be benchmarked here, or None when it can."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    try:
        import litellm  # noqa: PLC0415 - optional, heavy, benchmark-only
    except Exception as exc:
        return f"litellm is not importable ({type(exc).__name__}: {exc}); pip install litellm"
    litellm.telemetry = False
    return None


class LiteLLMContender:
    """LiteLLM's ``Router.acompletion`` with ``mock_response``: offline, no cost-map download.

    Success: the primary deployment answers. Failover: the primary's mock raises and the
    Router falls back to the secondary deployment (``num_retries=0``).
    """

    def __init__(self, scenario: Scenario) -> None:
        from litellm import Router  # noqa: PLC0415 - optional, heavy, benchmark-only

        def deployment(name: str, script: str) -> dict[str, Any]:
            mock: object = RESPONSE if script == ANSWER else Exception("upstream overloaded")
            return {
                "model_name": name,
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_key": "sk-fake-benchmark",
                    "mock_response": mock,
                },
            }

        self.router = Router(
            model_list=[
                deployment("primary", scenario.scripts[0]),
                deployment("secondary", scenario.scripts[1]),
            ],
            fallbacks=[{"primary": ["secondary"]}],
            num_retries=0,
        )
        self.answers = 0

    async def call(self, prompt: str) -> Any:
        response = await self.router.acompletion(
            model="primary", messages=[{"role": "user", "content": prompt}]
        )
        self.answers += response.choices[0].message.content == RESPONSE
        return response

    async def settle(self) -> None:
        return None

    def check(self, calls: int) -> None:
        assert self.answers == calls, f"litellm answered {self.answers} of {calls}"

    async def close(self) -> None:
        return None


def build(contender: str, scenario: Scenario, workdir: Path) -> Any:
    """A fresh contender of kind ``contender`` for ``scenario``, with fresh clients."""
    if contender == FLOOR:
        return Floor(scenario)
    if contender == TENACITY:
        return TenacityContender(scenario)
    if contender == LITELLM:
        return LiteLLMContender(scenario)
    return EngineContender(scenario, contender, workdir)


__all__ = [
    "ENGINE_MODES",
    "FLOOR",
    "LITELLM",
    "NULL_LOG",
    "TENACITY",
    "FloorEvent",
    "build",
    "label",
    "litellm_unavailable",
]
