"""Health: probes, failure streaks, maintenance, the background loop and restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    replay,
)

from .fakes import FakeClock, FakeModelClient, always, engine, failing, ids, script

pytestmark = pytest.mark.anyio


def probes_of(fo: MultiModelFailover) -> list[Any]:
    return [e for e in fo.event_store.read() if e.type == "health_probe"]


def streak(fo: MultiModelFailover, model_id: str) -> int:
    return replay(fo.event_store).states[model_id].streak


# -- probes -----------------------------------------------------------------------------------


async def test_a_failed_probe_marks_the_client_unhealthy_at_once() -> None:
    primary = FakeModelClient(model_id="primary", probe=False)
    secondary = FakeModelClient(model_id="secondary")
    async with engine([primary, secondary]) as fo:
        states = await fo.check_health()
        assert states == {"primary": HealthState.UNHEALTHY, "secondary": HealthState.HEALTHY}
        assert fo.states == states
        assert fo.rotation == ["secondary"]
        await fo.call("hi")
    assert primary.calls == []
    changed = [e for e in fo.event_store.read() if e.type == "state_changed"]
    assert [(e.model_id, e.from_state, e.to_state) for e in changed] == [
        ("primary", HealthState.HEALTHY, HealthState.UNHEALTHY)
    ]


async def test_a_successful_probe_returns_an_unhealthy_client_to_healthy() -> None:
    primary = FakeModelClient(model_id="primary", probe=False)
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        await fo.check_health()
        primary.probe = True
        assert (await fo.check_health())["primary"] is HealthState.HEALTHY
        assert fo.rotation == ["primary", "secondary"]


async def test_a_successful_probe_returns_a_degraded_client_to_healthy() -> None:
    primary = FakeModelClient(failing("server"), model_id="primary")
    async with engine([primary, FakeModelClient(model_id="secondary")], {"max_attempts": 1}) as fo:
        await fo.call("hi")
        assert fo.states["primary"] is HealthState.DEGRADED
        assert (await fo.check_health())["primary"] is HealthState.HEALTHY
    assert streak(fo, "primary") == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionError("refused"), ErrorKind.UNKNOWN),
        (ModelError("bad key", kind="auth"), ErrorKind.AUTH),
    ],
)
async def test_a_probe_that_raises_marks_the_client_unhealthy(
    error: Exception, kind: ErrorKind
) -> None:
    primary = FakeModelClient(model_id="primary", probe=error)
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        assert (await fo.check_health())["primary"] is HealthState.UNHEALTHY
    (probe,) = [p for p in probes_of(fo) if p.model_id == "primary"]
    assert probe.ok is False
    assert probe.error_kind is kind


async def test_a_probe_that_hangs_past_probe_timeout_marks_the_client_unhealthy() -> None:
    async def hangs() -> bool:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    primary = FakeModelClient(model_id="primary", probe=hangs)
    clients = [primary, FakeModelClient(model_id="secondary")]
    async with engine(clients, health_policy={"probe_timeout": 0.05}) as fo:
        with anyio.fail_after(5):
            states = await fo.check_health()
    assert states == {"primary": HealthState.UNHEALTHY, "secondary": HealthState.HEALTHY}
    (probe,) = [p for p in probes_of(fo) if p.model_id == "primary"]
    assert probe.error_kind is ErrorKind.TIMEOUT


# -- the failure streak -----------------------------------------------------------------------


async def test_streak_thresholds_degrade_then_remove_a_client() -> None:
    primary = FakeModelClient(failing("server"), model_id="primary")
    clients = [primary, FakeModelClient(model_id="secondary")]
    health = {"degraded_after": 2, "unhealthy_after": 3}
    async with engine(clients, {"max_attempts": 1}, health_policy=health) as fo:
        seen = []
        for _ in range(3):
            await fo.call("hi")
            seen.append((fo.states["primary"], fo.rotation))
    assert seen == [
        (HealthState.HEALTHY, ["primary", "secondary"]),
        (HealthState.DEGRADED, ["primary", "secondary"]),
        (HealthState.UNHEALTHY, ["secondary"]),
    ]


async def test_the_streak_counts_calls_not_attempts() -> None:
    primary = FakeModelClient(failing("server"), model_id="primary")
    clients = [primary, FakeModelClient(model_id="secondary")]
    async with engine(clients, {"max_attempts": 3}, health_policy={"degraded_after": 2}) as fo:
        await fo.call("hi")
        assert fo.states["primary"] is HealthState.HEALTHY
    assert len(primary.calls) == 3
    assert streak(fo, "primary") == 1


async def test_a_success_ends_the_streak() -> None:
    down = ModelError("down", kind="server")
    primary = FakeModelClient(script(down, down, "up", down), model_id="primary")
    clients = [primary, FakeModelClient(model_id="secondary")]
    health = {"degraded_after": 2, "unhealthy_after": 3}
    async with engine(clients, {"max_attempts": 1}, health_policy=health) as fo:
        await fo.call("1")
        await fo.call("2")
        assert fo.states["primary"] is HealthState.DEGRADED
        assert await fo.call("3") == "up"
        assert streak(fo, "primary") == 0
        await fo.call("4")
        assert fo.states["primary"] is HealthState.HEALTHY
    assert streak(fo, "primary") == 1


async def test_a_state_change_takes_effect_from_the_next_call() -> None:
    clock = FakeClock()
    a = FakeModelClient(failing("server"), model_id="a", probe=False)
    b = FakeModelClient(always("from b"), model_id="b")
    async with engine([a, b], {"max_attempts": 2}, clock=clock) as fo:

        async def probe_during_backoff(seconds: float) -> None:
            await fo.check_health()
            assert fo.states["a"] is HealthState.UNHEALTHY

        clock.on_sleep = probe_during_backoff
        assert await fo.call("first") == "from b"
        clock.on_sleep = None
        # The call in progress finished its attempts on `a`; the next one skips it.
        assert len(a.calls) == 2
        assert fo.rotation == ["b"]
        await fo.call("second")
    assert len(a.calls) == 2
    assert ids(fo.event_store.read(), "attempt_started") == ["a", "a", "b", "b"]


# -- maintenance ------------------------------------------------------------------------------


async def test_maintenance_takes_a_client_out_and_puts_it_back() -> None:
    primary = FakeModelClient(always("from primary"), model_id="primary")
    clients = [primary, FakeModelClient(model_id="secondary")]
    async with engine(clients) as fo:
        await fo.set_maintenance("primary", True, reason="provider upgrade")
        assert fo.states["primary"] is HealthState.MAINTENANCE
        assert fo.rotation == ["secondary"]
        assert await fo.call("hi") == "ok"
        await fo.set_maintenance("primary", False, reason="done")
        assert fo.states["primary"] is HealthState.HEALTHY
        assert await fo.call("hi") == "from primary"
    assert primary.calls == ["hi"]
    audit = replay(fo.event_store).audit
    assert [(a.action, a.reason) for a in audit] == [
        ("maintenance_on", "provider upgrade"),
        ("maintenance_off", "done"),
    ]


async def test_maintenance_of_an_unknown_id_lists_the_known_ones() -> None:
    async with engine([FakeModelClient(model_id="alpha"), FakeModelClient(model_id="beta")]) as fo:
        with pytest.raises(ValueError, match="gamma") as raised:
            await fo.set_maintenance("gamma", True)
    assert "alpha" in str(raised.value)
    assert "beta" in str(raised.value)


async def test_probes_skip_clients_in_maintenance_and_never_clear_it() -> None:
    primary = FakeModelClient(model_id="primary")
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        await fo.set_maintenance("primary", True)
        states = await fo.check_health()
    assert states["primary"] is HealthState.MAINTENANCE
    assert primary.probes == 0
    assert [p.model_id for p in probes_of(fo)] == ["secondary"]


async def test_maintenance_of_an_unhealthy_client_ends_healthy() -> None:
    primary = FakeModelClient(model_id="primary", probe=False)
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        await fo.check_health()
        await fo.set_maintenance("primary", True)
        await fo.set_maintenance("primary", False)
        assert fo.states["primary"] is HealthState.HEALTHY


# -- the background loop ----------------------------------------------------------------------


async def wait_for_probes(client: FakeModelClient, count: int) -> None:
    with anyio.fail_after(5):
        while client.probes < count:  # noqa: ASYNC110 - the loop bumps a plain counter
            await anyio.sleep(0.01)


async def test_the_background_loop_probes_while_open_and_stops_after() -> None:
    primary = FakeModelClient(model_id="primary")
    fo = MultiModelFailover([primary], health_check_interval=0.05)
    async with fo:
        await wait_for_probes(primary, 3)
    stopped_at = primary.probes
    await anyio.sleep(0.2)
    assert primary.probes == stopped_at
    events = list(fo.event_store.read())
    assert events[-1].type == "engine_stopped"
    assert len(probes_of(fo)) >= 3


async def test_aclose_stops_the_background_loop() -> None:
    primary = FakeModelClient(model_id="primary", probe=False)
    fo = MultiModelFailover([primary], health_check_interval=0.05)
    async with fo:
        await wait_for_probes(primary, 2)
        await fo.aclose()
        stopped_at = primary.probes
        await anyio.sleep(0.2)
        assert primary.probes == stopped_at
    assert fo.states["primary"] is HealthState.UNHEALTHY
    with pytest.raises(RuntimeError, match="closed"):
        await fo.call("hi")


# -- restarts ---------------------------------------------------------------------------------


async def test_states_and_metrics_survive_a_restart(tmp_path: Path) -> None:
    log = str(tmp_path / "events.sqlite3")

    def clients() -> list[FakeModelClient]:
        return [
            FakeModelClient(failing("server"), model_id="a", probe=False),
            FakeModelClient(failing("server"), model_id="b"),
            FakeModelClient(model_id="c"),
            FakeModelClient(model_id="d"),
        ]

    async with engine(clients(), {"max_attempts": 2}, event_store=log) as first:
        await first.check_health()
        await first.set_maintenance("c", True, reason="upgrade")
        assert await first.call("hi") == "ok"
        states, metrics = first.states, first.metrics()
    assert states == {
        "a": HealthState.UNHEALTHY,
        "b": HealthState.DEGRADED,
        "c": HealthState.MAINTENANCE,
        "d": HealthState.HEALTHY,
    }

    async with engine(clients(), event_store=log) as second:
        assert second.states == states
        assert second.metrics() == metrics
        assert second.rotation == ["b", "d"]
    assert replay(log).metrics == metrics
    assert replay(log).states["b"].streak == 1
