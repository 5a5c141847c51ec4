"""Engines sharing one log (replicas): following each other, and the health scope.

Two engines in one process on one SQLite file behave as two replicas would: separate stores,
separate writers. The PostgreSQL fleet tests do the same across processes and a real server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from devs.risks.multi_model_failover import HealthState, MultiModelFailover, replay
from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.core.policies import HealthPolicy
from devs.risks.multi_model_failover.storage import SQLiteEventStore

pytestmark = pytest.mark.anyio


class Provider:
    """A model whose probe answers what ``up`` says (the same provider seen by every replica)."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def call(self, prompt: str) -> str:
        self.calls += 1
        return f"answer to {prompt}"

    async def health_check(self) -> bool:
        return self.up


def replica(path: Path, primary: Provider, backup: Provider, scope: str) -> MultiModelFailover:
    return MultiModelFailover(
        {"primary": primary, "backup": backup},
        event_store=path,
        health_policy=HealthPolicy(scope=scope),  # type: ignore[arg-type]
        health_check_interval=3600,  # only the probes the test asks for
        follow_interval=0.02,
    )


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> float:
    """Wait until ``condition()`` holds; fail after ``within`` seconds. Returns the wait."""
    start = anyio.current_time()
    while not condition():
        assert anyio.current_time() - start < within, f"not within {within}s"
        await anyio.sleep(0.01)
    return anyio.current_time() - start


async def test_fleet_scope_a_failed_probe_on_one_replica_reroutes_the_other(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite3"
    primary, backup = Provider(), Provider()
    async with (
        replica(path, primary, backup, "fleet") as a,
        replica(path, primary, backup, "fleet") as b,
    ):
        primary.up = False
        await a.check_health()
        assert a.states["primary"] is HealthState.UNHEALTHY
        await eventually(lambda: b.states["primary"] is HealthState.UNHEALTHY)
        assert b.rotation == ["backup"]
        assert await b.call("hi") == "answer to hi"
        assert primary.calls == 0  # b no longer sends to the provider that is down
        primary.up = True
        await b.check_health()  # any replica's good probe brings it back everywhere
        await eventually(lambda: a.states["primary"] is HealthState.HEALTHY)
        await a.follow()
        assert a.metrics() == replay(path).metrics  # the live view is the shared log's


async def test_replica_scope_keeps_health_local_but_shares_maintenance(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    # A local network problem: a's route to the primary is down, b's is fine.
    a_primary, b_primary, backup = Provider(), Provider(), Provider()
    async with (
        replica(path, a_primary, backup, "replica") as a,
        replica(path, b_primary, backup, "replica") as b,
    ):
        a_primary.up = False
        await a.check_health()
        assert a.states["primary"] is HealthState.UNHEALTHY
        await eventually(lambda: b.metrics().probe_failures >= 1)  # b has read a's probe...
        assert b.states["primary"] is HealthState.HEALTHY  # ...and keeps its own judgement
        assert b.rotation == ["primary", "backup"]
        await a.set_maintenance("backup", True, reason="provider migration")
        await eventually(lambda: b.states["backup"] is HealthState.MAINTENANCE)
        assert b.rotation == ["primary"]
        await b.follow()
        assert b.metrics() == replay(path).metrics  # metrics are the whole fleet's


async def test_concurrent_follows_fold_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    primary, backup = Provider(), Provider()
    writer = replica(path, primary, backup, "fleet")
    reader = MultiModelFailover({"primary": primary, "backup": backup}, event_store=path)
    for n in range(50):
        await writer.call(f"q{n}")
    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(reader.follow)
    assert reader.metrics() == replay(path).metrics
    assert reader.metrics().calls_succeeded == 50
    await writer.aclose()
    await reader.aclose()


def test_an_unknown_health_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope must be one of fleet, replica"):
        HealthPolicy(scope="galaxy")  # type: ignore[arg-type]


class FlakyFollowStore(SQLiteEventStore):
    """A shared log that cannot be read while ``down`` is set (a database outage)."""

    down = False

    def read_others(self, after: int) -> tuple[list[Event], int]:
        if self.down:
            raise EventLogError("could not connect to server: Connection refused")
        return super().read_others(after)


async def test_an_unreadable_shared_log_leaves_health_local_and_says_so_once(
    tmp_path: Path, log_records: list[dict[str, object]]
) -> None:
    path = tmp_path / "shared.sqlite3"
    primary, backup = Provider(), Provider()
    store = FlakyFollowStore(path)
    async with (
        replica(path, primary, backup, "fleet") as other,
        MultiModelFailover(
            {"primary": primary, "backup": backup},
            event_store=store,
            health_check_interval=3600,
            follow_interval=0.01,
        ) as fo,
    ):
        store.down = True
        await anyio.sleep(0.1)  # about ten failed reads
        primary.up = False
        await other.check_health()  # the other replica sees the outage; fo cannot read it
        await anyio.sleep(0.1)
        assert fo.states["primary"] is HealthState.HEALTHY  # local health: its own view
        assert await fo.call("still served") == "answer to still served"
        await fo.check_health()  # its own probe still moves its own rotation
        assert fo.rotation == ["backup"]
        store.down = False
        await eventually(lambda: fo.metrics() == replay(path).metrics)
    errors = [r for r in log_records if r["level"].name == "ERROR"]  # type: ignore[attr-defined]
    assert len(errors) == 1  # once per outage, not once per read
    assert "health is local until it is back" in str(errors[0]["message"])
    assert any("readable again" in str(r["message"]) for r in log_records)
