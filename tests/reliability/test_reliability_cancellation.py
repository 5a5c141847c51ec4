"""Cancellation and hangs: the caller's cancel is never swallowed nor blamed on a model, and a
client that hangs (async or in a blocking sync call) never hangs the engine.

Each test checks that the engine still answers other calls, that ``aclose()`` returns
promptly (bounded by ``fail_after`` as a hang guard) and that no task outlives it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from reliability_support import (
    ScriptedClient,
    assert_one_terminal_each,
    eventually,
    running_tasks,
)

from devs.risks.multi_model_failover import (
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.core.events import HealthProbe

pytestmark = pytest.mark.anyio

GUARD = 10.0  # seconds: a hang guard around what must return at once


@asynccontextmanager
async def engine(*clients: Any, **options: Any) -> AsyncIterator[MultiModelFailover]:
    """An engine that must close promptly and leave no task behind."""
    tasks = running_tasks()
    fo = MultiModelFailover(list(clients), **options)
    try:
        yield fo
    finally:
        with anyio.fail_after(GUARD):
            await fo.aclose()
    assert running_tasks() == tasks, "a task outlived aclose()"


def hang_once(entered: anyio.Event) -> Callable[[Any], Awaitable[str]]:
    """A call that hangs the first time (after setting ``entered``) and answers afterwards."""
    hung = False

    async def call(prompt: Any) -> str:
        nonlocal hung
        if not hung:
            hung = True
            entered.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()
        return "answered"

    return call


async def cancel_when(fo: MultiModelFailover, ready: anyio.Event) -> None:
    """Start a call, cancel it once ``ready`` is set."""
    async with anyio.create_task_group() as group:
        group.start_soon(fo.call, "cancel me")
        await ready.wait()
        group.cancel_scope.cancel()


def assert_nobody_blamed(fo: MultiModelFailover) -> None:
    """The one call was cancelled; no model lost health over it."""
    events = list(fo.event_store.read())
    assert assert_one_terminal_each(events) == {"call_cancelled": 1}
    assert not [e for e in events if e.type in ("attempt_failed", "failover", "call_failed")]
    assert set(fo.states.values()) == {HealthState.HEALTHY}
    assert fo.metrics().calls_cancelled == 1


async def test_cancel_during_an_async_attempt() -> None:
    entered = anyio.Event()
    async with engine(ScriptedClient("slow", call=hang_once(entered)), ScriptedClient("b")) as fo:
        await cancel_when(fo, entered)
        assert_nobody_blamed(fo)
        assert await fo.call("next") == "answered"


async def test_cancel_during_a_blocking_sync_attempt() -> None:
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        model_id = "blocking"

        def call(self, prompt: Any) -> str:
            entered.set()
            release.wait()
            return "late"

        def health_check(self) -> bool:
            return True

    async with engine(Blocking(), ScriptedClient("spare")) as fo:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(fo.call, "cancel me")
                await anyio.to_thread.run_sync(entered.wait)
                group.cancel_scope.cancel()
            assert_nobody_blamed(fo)
        finally:
            release.set()


async def test_cancel_during_a_real_backoff() -> None:
    async def overloaded(prompt: Any) -> str:
        await anyio.lowlevel.checkpoint()
        raise ModelError("overloaded", kind=ErrorKind.SERVER)

    policy = {"max_attempts": 2, "base_delay": 10, "max_delay": 10, "jitter": "none"}
    async with engine(
        ScriptedClient("a", call=overloaded), ScriptedClient("b"), retry_policy=policy
    ) as fo:
        with anyio.move_on_after(0.2) as scope:
            await fo.call("wait for me")
        assert scope.cancelled_caught
        events = list(fo.event_store.read())
        assert [e.type for e in events if e.type in ("backoff", "call_cancelled")] == [
            "backoff",
            "call_cancelled",
        ]
        assert not [e for e in events if e.type in ("failover", "call_failed")]
        assert fo.metrics().calls_cancelled == 1


async def test_cancel_during_a_probe_blames_nobody() -> None:
    async def hang() -> bool:
        await anyio.sleep_forever()
        return True  # pragma: no cover

    async with engine(ScriptedClient("a", probe=hang), ScriptedClient("b")) as fo:
        with anyio.move_on_after(0.1) as scope:
            await fo.check_health()
        assert scope.cancelled_caught
        assert fo.states["a"] is HealthState.HEALTHY
        assert not [e for e in fo.event_store.read() if isinstance(e, HealthProbe) and not e.ok]
        assert await fo.call("next") == "a answered"


async def test_a_hanging_probe_is_cut_by_probe_timeout() -> None:
    async def hang() -> bool:
        await anyio.sleep_forever()
        return True  # pragma: no cover

    async with engine(
        ScriptedClient("a", probe=hang), ScriptedClient("b"), health_policy={"probe_timeout": 0.05}
    ) as fo:
        with anyio.fail_after(GUARD):
            states = await fo.check_health()
        assert states == {"a": HealthState.UNHEALTHY, "b": HealthState.HEALTHY}
        failed = [e for e in fo.event_store.read() if isinstance(e, HealthProbe) and not e.ok]
        assert [(e.model_id, e.error_kind) for e in failed] == [("a", ErrorKind.TIMEOUT)]
        assert await fo.call("next") == "b answered"


async def test_a_raising_health_check_marks_unhealthy_and_the_loop_goes_on() -> None:
    async def broken() -> bool:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("probe endpoint exploded")

    broken_client, good = ScriptedClient("a", probe=broken), ScriptedClient("b")
    async with engine(broken_client, good, health_check_interval=0.02) as fo, fo:
        await eventually(lambda: good.probes >= 5)
        assert broken_client.probes >= 4, "the raising client stopped being probed"
        assert fo.states["a"] is HealthState.UNHEALTHY
        assert await fo.call("meanwhile") == "b answered"


async def test_a_hanging_probe_neither_stops_nor_piles_up_the_loop() -> None:
    inside = 0
    most = 0

    async def hang() -> bool:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await anyio.sleep_forever()
        finally:
            inside -= 1
        return True  # pragma: no cover

    hanging, good = ScriptedClient("a", probe=hang), ScriptedClient("b")
    async with (
        engine(
            hanging, good, health_check_interval=0.02, health_policy={"probe_timeout": 0.05}
        ) as fo,
        fo,
    ):
        # Each client has its own probe loop: the hanging one goes on at its own pace.
        await eventually(lambda: good.probes >= 5 and hanging.probes >= 4)
        assert most == 1, "probes of one client overlapped"
        assert await fo.call("meanwhile") == "b answered"


async def test_sync_calls_that_block_forever_do_not_hang_the_engine() -> None:
    release = threading.Event()
    # Should the engine hang after all, free its threads so that the test can fail.
    watchdog = threading.Timer(3 * GUARD, release.set)
    watchdog.start()

    class Blocking:
        model_id = "blocking"
        calls = 0

        def call(self, prompt: Any) -> str:
            Blocking.calls += 1
            release.wait()
            return "late"

        def health_check(self) -> bool:
            return True

    # More stuck calls than anyio's default thread limiter (40) has tokens.
    stuck = 45
    policy = {"max_attempts": 1, "attempt_timeout": 0.05}
    health = {"degraded_after": 1000, "unhealthy_after": 1000}
    try:
        async with engine(
            Blocking(), ScriptedClient("spare"), retry_policy=policy, health_policy=health
        ) as fo:
            answers: list[str] = []

            async def one() -> None:
                answers.append(await fo.call("stuck"))

            with anyio.fail_after(GUARD):
                async with anyio.create_task_group() as group:
                    for _ in range(stuck):
                        group.start_soon(one)
                assert answers == ["spare answered"] * stuck
                assert Blocking.calls >= 40, "the blocking client never blocked"
                await fo.check_health()  # the engine's own thread hops still run
                assert await fo.call("after") == "spare answered"
    finally:
        release.set()
        watchdog.cancel()
