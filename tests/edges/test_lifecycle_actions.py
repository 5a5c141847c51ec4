"""Edge cases: probe loops after close, error_actions combinations, stream outcome when
the caller is cancelled during its commit."""

from __future__ import annotations

from contextlib import aclosing, suppress
from typing import Any

import anyio
import pytest
from tests.core.fakes import FakeModelClient, always, failing, hang

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    VirtualClock,
    replay,
)
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


def _types(fo: MultiModelFailover) -> list[str]:
    return [e.type for e in fo.event_store.read()]


async def test_no_event_after_engine_stopped_with_slow_probes_on_virtual_time() -> None:
    clock = VirtualClock()

    def slow_probe(ok: bool) -> Any:
        async def probe() -> bool:
            await clock.sleep(0.7)
            return ok

        return probe

    fo = MultiModelFailover(
        {
            "a": FakeModelClient(failing("server"), probe=slow_probe(False)),
            "b": FakeModelClient(always("b"), probe=slow_probe(True)),
        },
        health_check_interval=1,
        clock=clock,
        durability="buffered",
        follow_interval=0.3,
    )
    async with clock.autojump():
        async with fo:
            for _ in range(5):
                await fo.call("hi")
                await clock.sleep(0.35)
        # after close: time goes on, nothing more may be written
        await clock.sleep(30)
    types = _types(fo)
    assert types[-1] == "engine_stopped", types[-5:]
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_check_health_racing_aclose_writes_nothing_after_engine_stopped() -> None:
    clock = VirtualClock()

    async def probe() -> bool:
        await clock.sleep(1)
        return False

    fo = MultiModelFailover(
        {"a": FakeModelClient(always("a"), probe=probe), "b": FakeModelClient(always("b"))},
        clock=clock,
        durability="buffered",
    )
    async with clock.autojump():
        async with anyio.create_task_group() as group:

            async def check() -> None:
                with suppress(RuntimeError):
                    await fo.check_health()

            group.start_soon(check)
            await clock.sleep(0.5)
            await fo.aclose()
        await clock.sleep(5)
    assert _types(fo)[-1] == "engine_stopped"


async def test_every_kind_fail_fails_fast_with_the_clients_own_error() -> None:
    actions = {k.value: "fail" for k in ErrorKind if k is not ErrorKind.DEADLINE}
    secondary = FakeModelClient(always("b"))
    fo = MultiModelFailover(
        {"a": FakeModelClient(failing("server", status=503, code="overloaded")), "b": secondary},
        {"error_actions": actions},
        durability="buffered",
    )
    async with fo:
        with pytest.raises(ModelError) as raised:
            await fo.call("hi")
    assert type(raised.value) is ModelError
    assert (raised.value.kind, raised.value.status, raised.value.code) == (
        ErrorKind.SERVER,
        503,
        "overloaded",
    )
    assert raised.value.model_id == "a"
    assert secondary.calls == []
    failed = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert failed[0].reason == "fail_fast"
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_timeout_fail_on_the_engines_own_attempt_timeout() -> None:
    clock = VirtualClock()
    secondary = FakeModelClient(always("b"))
    fo = MultiModelFailover(
        {"a": FakeModelClient(hang), "b": secondary},
        {"error_actions": {"timeout": "fail"}, "attempt_timeout": 1},
        clock=clock,
        durability="buffered",
    )
    async with clock.autojump():
        try:
            with pytest.raises(ModelError) as raised:
                await fo.call("hi")
        finally:
            await fo.aclose()
    assert raised.value.kind is ErrorKind.TIMEOUT
    assert not isinstance(raised.value, AllModelsFailedError)
    assert secondary.calls == []
    assert replay(fo.event_store).metrics == fo.metrics()


@pytest.mark.parametrize("kind", ["bad_request", "content_filter"])
async def test_a_non_counting_kind_set_to_retry_is_retried_then_fails_over(kind: str) -> None:
    primary = FakeModelClient(failing(kind))
    fo = MultiModelFailover(
        {"a": primary, "b": FakeModelClient(always("b"))},
        {"error_actions": {kind: "retry"}, "jitter": "none", "base_delay": 0.001},
        durability="buffered",
    )
    async with fo:
        assert await fo.call("hi") == "b"
    assert len(primary.calls) == 2
    assert fo.states["a"] is HealthState.HEALTHY  # these kinds never count
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_bad_request_retry_everywhere_ends_exhausted() -> None:
    fo = MultiModelFailover(
        {
            "a": FakeModelClient(failing("bad_request")),
            "b": FakeModelClient(failing("bad_request")),
        },
        {"error_actions": {"bad_request": "retry"}, "jitter": "none", "base_delay": 0.001},
        durability="buffered",
    )
    async with fo:
        with pytest.raises(AllModelsFailedError):
            await fo.call("hi")
    assert [e.reason for e in fo.event_store.read() if e.type == "call_failed"] == ["exhausted"]


class SlowCommit(SQLiteEventStore):
    """Commits take a while: the caller can be cancelled while its outcome is committed."""

    async def wait_committed(self, ticket: int) -> None:
        await anyio.sleep(0.2)
        await super().wait_committed(ticket)


async def test_a_stream_cancelled_while_its_outcome_commits_shows_no_outcome() -> None:
    """Docs (Lifecycle): "A caller cancelled there never sees the outcome just recorded ...
    A call's outcome is thus always its last terminal event." A stream sets `.outcome`
    before the commit, so it shows success while the log says cancelled."""
    fo = MultiModelFailover(
        {"a": FakeModelClient(always("whole answer"))},
        event_store=SlowCommit(":memory:", durability="process"),
    )
    async with fo:
        stream = fo.stream("hi")
        with anyio.move_on_after(0.1):
            async with aclosing(stream):
                async for _ in stream:
                    pass
    last = [e for e in fo.event_store.read() if getattr(e, "call_id", None)][-1]
    assert last.type == "call_cancelled"
    assert last.supersedes == "call_succeeded"
    assert stream.outcome is None, f"caller sees {stream.outcome!r} but the log says cancelled"
