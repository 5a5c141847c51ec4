"""Two writers on one log: the fold is a pure function of the log in ``seq`` order.

A replica whose view is stale may append a transition from a state that another writer has
already changed (an ``unhealthy`` verdict, an operator's maintenance). Such a transition has no
effect, live and in replay alike; the stale replica's live view equals the fold of what it has
read plus its own events, and equals the replay once it has followed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover import (
    HealthState,
    ModelError,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.core.events import StateChanged

from .fakes import FakeClock, FakeModelClient, always, failing

pytestmark = pytest.mark.anyio


def replica(log: Path, name: str, primary: FakeModelClient, **options: Any) -> MultiModelFailover:
    clock = FakeClock()
    return MultiModelFailover(
        {"primary": primary, "backup": FakeModelClient(always("from backup"))},
        {"max_attempts": 1, "jitter": "none"},
        event_store=log,
        replica=name,
        sleep=clock.sleep,
        clock=clock,
        **options,
    )


def assert_equals_replay(fo: MultiModelFailover, log: Path) -> None:
    replayed = replay(log)
    assert fo.metrics() == replayed.metrics
    assert fo.states == {m: replayed.states[m].state for m in fo.model_ids}


async def test_a_stale_replica_cannot_undo_another_replicas_unhealthy_verdict(
    tmp_path: Path,
) -> None:
    log = tmp_path / "shared.sqlite3"
    stale = replica(log, "a", FakeModelClient(failing("server")))
    judge = replica(log, "b", FakeModelClient(probe=False))
    try:
        await judge.check_health()  # b: primary healthy -> unhealthy
        judge.event_store.flush()  # type: ignore[attr-defined]  # in the log before a's call
        assert judge.states["primary"] is HealthState.UNHEALTHY
        assert await stale.call("hi") == "from backup"  # a has not followed: it still tries it
        # a's own view: its own transition, from the state it knew.
        assert stale.states["primary"] is HealthState.DEGRADED
        assert replay(log).states["primary"].state is HealthState.UNHEALTHY
        await stale.follow()
        assert stale.states["primary"] is HealthState.UNHEALTHY
        assert stale.rotation == ["backup"]
        assert_equals_replay(stale, log)
        await judge.follow()
        assert_equals_replay(judge, log)
    finally:
        await stale.aclose()
        await judge.aclose()


async def test_a_stale_replica_cannot_undo_an_operators_maintenance(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"
    stale = replica(log, "a", FakeModelClient(failing("server")))
    operator = replica(log, "ops", FakeModelClient())
    try:
        await operator.set_maintenance("primary", True, reason="provider incident")
        await stale.call("hi")  # stale: healthy -> degraded, a premise that no longer holds
        restarted = replay(log)
        assert restarted.states["primary"].state is HealthState.MAINTENANCE
        await stale.follow()
        assert stale.states["primary"] is HealthState.MAINTENANCE
        assert "primary" not in stale.rotation
        assert_equals_replay(stale, log)
    finally:
        await stale.aclose()
        await operator.aclose()


def test_only_maintenance_events_move_into_or_out_of_maintenance() -> None:
    from datetime import UTC, datetime  # noqa: PLC0415

    from devs.risks.multi_model_failover.core.events import Maintenance  # noqa: PLC0415
    from devs.risks.multi_model_failover.core.projections import fold  # noqa: PLC0415

    at = datetime(2026, 1, 1, tzinfo=UTC)
    m, h = HealthState.MAINTENANCE, HealthState.HEALTHY
    snap = fold(
        [
            Maintenance(at=at, model_id="x", on=True),
            StateChanged(at=at, model_id="x", from_state=m, to_state=h),
            StateChanged(at=at, model_id="y", from_state=h, to_state=m),
        ]
    )
    assert snap.states["x"].state is m
    assert snap.states["y"].state is h
    assert snap.metrics.state_changes == 1  # the maintenance itself


# -- random interleavings of two writers ------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["call", "call", "probe", "follow", "maintenance"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


class Coin:
    """A model client whose calls and probes succeed or fail as a seeded coin says."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def call(self, prompt: str) -> str:
        if self.rng.random() < 0.5:
            raise ModelError("503", kind="server")
        return "from primary"

    async def health_check(self) -> bool:
        return self.rng.random() < 0.5


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, seed=st.integers(0, 1000))
def test_two_writers_in_any_order_converge_to_the_replay(
    tmp_path_factory: pytest.TempPathFactory, anyio_backend: str, ops: list[Any], seed: int
) -> None:
    log = tmp_path_factory.mktemp("fleet") / "shared.sqlite3"

    async def run() -> None:
        fleet = {
            name: MultiModelFailover(
                {"primary": Coin(seed + i), "backup": FakeModelClient(always("b"))},
                {"max_attempts": 1, "jitter": "none"},
                health_policy={"unhealthy_after": 2},
                event_store=log,
                replica=name,
            )
            for i, name in enumerate(("a", "b"))
        }
        try:
            for name, op, flag in ops:
                fo = fleet[name]
                if op == "call":
                    await fo.call("hi")
                elif op == "probe":
                    await fo.check_health()
                elif op == "follow":
                    await fo.follow()
                else:
                    await fo.set_maintenance("primary", flag)
            for fo in fleet.values():  # probes are not waited for: commit what is queued
                fo.event_store.flush()  # type: ignore[attr-defined]
            for fo in fleet.values():
                await fo.follow()
                assert_equals_replay(fo, log)
        finally:
            for fo in fleet.values():
                await fo.aclose()

    anyio.run(run, backend=anyio_backend)
