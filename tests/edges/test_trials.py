"""Edge cases of issue 14's recovery: trial slots, probe schedule, last resort."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import anyio
import pytest
from tests.core.fakes import FakeModelClient, always

from devs.risks.multi_model_failover import (
    EventLogError,
    HealthState,
    ModelError,
    MultiModelFailover,
    VirtualClock,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


class Gate:
    """A client whose calls/streams wait for ``release``; counts concurrency and trials."""

    def __init__(self, text: str = "from gate") -> None:
        self.text = text
        self.inside = 0
        self.most_inside = 0
        self.calls = 0
        self.go = anyio.Event()
        self.healthy = False
        self.first_chunk_sent = anyio.Event()

    async def call(self, prompt: Any) -> str:
        self.calls += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.go.wait()
            return self.text
        finally:
            self.inside -= 1

    def stream(self, prompt: Any) -> Any:
        gate = self

        async def chunks() -> Any:
            gate.calls += 1
            gate.inside += 1
            gate.most_inside = max(gate.most_inside, gate.inside)
            try:
                yield "first "
                gate.first_chunk_sent.set()
                await gate.go.wait()
                yield "rest"
            finally:
                gate.inside -= 1

        return chunks()

    async def health_check(self) -> bool:
        return self.healthy


def _events(fo: MultiModelFailover, kind: str) -> list[Any]:
    return [e for e in fo.event_store.read() if e.type == kind]


async def _make_unhealthy(fo: MultiModelFailover, clock: VirtualClock, model: str) -> None:
    await fo.check_health()
    assert fo.states[model] is HealthState.UNHEALTHY
    clock.advance(5)  # past trial_after


async def test_a_stream_trial_holds_its_slot_until_the_stream_ends() -> None:
    """Docs: "at most `trial_calls` (1) calls at once". A stream's trial releases its slot at
    its first chunk, so a second call trials the same unhealthy model meanwhile."""
    clock = VirtualClock()
    primary = Gate()
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        clock=clock,
        durability="buffered",
    )
    try:
        await _make_unhealthy(fo, clock, "primary")
        async with anyio.create_task_group() as group:
            texts: list[str] = []

            async def read_stream() -> None:
                async for chunk in fo.stream("hi"):
                    texts.append(chunk)

            group.start_soon(read_stream)
            await primary.first_chunk_sent.wait()
            # The trial stream is mid-answer on primary: primary is still unhealthy.
            assert fo.states["primary"] is HealthState.UNHEALTHY

            async def second_call() -> None:
                await fo.call("hi")

            group.start_soon(second_call)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            primary.go.set()
        trials = [e for e in _events(fo, "attempt_started") if e.trial]
        assert primary.most_inside == 1, f"{primary.most_inside} trials at once on primary"
        assert len(trials) == 1, f"{len(trials)} trial attempts while one was in flight"
    finally:
        await fo.aclose()


class FlakyAppendStore(SQLiteEventStore):
    """A store whose append fails once, on the first call_started after ``arm``."""

    armed = False

    def append(self, event: Any) -> int:
        if self.armed and event.type == "call_started":
            self.armed = False
            raise EventLogError("event log buffer full (simulated)")
        return super().append(event)


async def test_a_call_whose_call_started_cannot_be_appended_leaks_no_trial_slot() -> None:
    """`strict=True` stores raise `EventLogError` from `append` on overflow. A call that
    raises there has admitted its trial (runner.begin) but never reaches `run`'s `finally`:
    the slot is never given back, and the model never gets a trial again."""
    clock = VirtualClock()
    primary = FakeModelClient(always("from primary"), probe=False)
    store = FlakyAppendStore(":memory:", durability="buffered")
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("from secondary"))},
        clock=clock,
        event_store=store,
    )
    try:
        await _make_unhealthy(fo, clock, "primary")
        store.armed = True
        with pytest.raises(EventLogError, match=r"event log buffer full \(simulated\)"):
            await fo.call("hi")
        # primary has recovered; trials are allowed (trial_after passed): the next call must
        # try it as its trial.
        clock.advance(5)
        outcome = await fo.call_with_outcome("hi")
        assert outcome.model_id == "primary", "no trial ever again: the slot leaked"
    finally:
        await fo.aclose()


async def test_a_client_turned_unhealthy_by_a_probe_is_probed_again_a_second_later() -> None:
    """Docs (Recovery): "A client that turns unhealthy is probed `recovery_probe_delay` (1 s)
    later, then after twice as long each time a probe fails (2, 4, 8, 16 s...)". When the
    probe itself turned it unhealthy, the next probe comes 2 s later, not 1 s."""
    clock = VirtualClock()
    probes: list[float] = []

    async def probe() -> bool:
        probes.append(clock())
        return clock() >= 100

    primary = FakeModelClient(always("a"), probe=probe)
    fo = MultiModelFailover(
        {"primary": primary, "secondary": FakeModelClient(always("b"))},
        clock=clock,
        durability="buffered",
    )
    async with clock.autojump(), fo:
        await clock.sleep(20)
    gaps = [round(b - a, 3) for a, b in pairwise(probes)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0], gaps


async def test_last_resort_tries_a_model_that_stays_down_once_per_call() -> None:
    """With no model in rotation every call still tries each model (the documented last
    resort: the caller has nowhere else to go), but once, never with retries."""
    clock = VirtualClock()
    calls: list[float] = []

    async def down(prompt: str) -> str:
        calls.append(clock())
        raise ModelError("HTTP 503", kind="server")

    fo = MultiModelFailover(
        {"only": FakeModelClient(down, probe=False)},
        {"jitter": "none", "base_delay": 0.01},
        clock=clock,
        durability="buffered",
    )
    async with clock.autojump():
        try:
            await fo.check_health()
            for _ in range(10):
                with pytest.raises(ModelError):
                    await fo.call("hi")
                await clock.sleep(0.1)
        finally:
            await fo.aclose()
    assert len(calls) == 10, "one attempt per call in last resort, no retries"


async def test_two_engines_on_one_sqlite_log_trial_once_each(tmp_path: Any) -> None:
    """Fleet scope on one SQLite file: ``trial_calls`` is per engine (documented): each
    engine admits one trial at a time, not one for the fleet."""
    clock = VirtualClock()
    path = str(tmp_path / "log.sqlite3")
    a_gate = Gate()
    b_gate = Gate()
    a = MultiModelFailover(
        {"primary": a_gate, "secondary": FakeModelClient(always("s"))},
        clock=clock,
        event_store=path,
        durability="buffered",
    )
    b = MultiModelFailover(
        {"primary": b_gate, "secondary": FakeModelClient(always("s"))},
        clock=clock,
        event_store=path,
        durability="buffered",
    )
    try:
        await a.check_health()
        for _ in range(200):
            await b.follow()
            if b.states["primary"] is HealthState.UNHEALTHY:
                break
            await anyio.sleep(0.01)
        assert b.states["primary"] is HealthState.UNHEALTHY
        clock.advance(5)
        async with anyio.create_task_group() as group:
            group.start_soon(a.call, "hi")
            group.start_soon(b.call, "hi")
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert (a_gate.inside, b_gate.inside) == (1, 1), "one trial per engine"
            a_gate.go.set()
            b_gate.go.set()
    finally:
        await a.aclose()
        await b.aclose()
