"""Facts the log records so that a replay need not guess them, and the engine's seams a
simulator (``failover whatif``) drives: a shared retry budget and one probe on demand.

- ``call_started.timeout``: the caller's own timeout, when it gave one (the call's budget is
  the smaller of it and the policy's ``call_budget``).
- ``attempt_failed.retry_after``: the Retry-After the failure carried, also when no backoff
  followed (the engine failed over because the wait would not fit).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    EngineClosedError,
    ModelError,
    replay,
)
from devs.risks.multi_model_failover.core.engine import FailoverEngine
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    CallStarted,
    HealthProbe,
    encode,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.retry_budget import RetryBudget
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .fakes import FakeClock, FakeModelClient, always, engine, failing, script

pytestmark = pytest.mark.anyio


def pair(primary: FakeModelClient) -> list[FakeModelClient]:
    return [primary, FakeModelClient(always("secondary answer"), model_id="secondary")]


# -- call_started.timeout ------------------------------------------------------------------


async def test_call_started_records_the_callers_own_timeout() -> None:
    async with engine(pair(FakeModelClient(always("ok"), model_id="primary"))) as fo:
        await fo.call("hi", timeout=2.5)
        await fo.call("hi")
    given, plain = [e for e in fo.event_store.read() if isinstance(e, CallStarted)]
    assert given.timeout == 2.5
    assert plain.timeout is None
    # Not given, not written: the common event stays as small as it was.
    assert b"timeout" not in encode(plain)


async def test_a_timeout_longer_than_the_budget_is_recorded_as_given() -> None:
    async with engine(
        pair(FakeModelClient(always("ok"), model_id="primary")), {"call_budget": 10}
    ) as fo:
        await fo.call("hi", timeout=60)
    (started,) = [e for e in fo.event_store.read() if isinstance(e, CallStarted)]
    assert started.timeout == 60  # the policy's budget is on engine_started


async def test_a_stream_records_its_timeout_too() -> None:
    async def chunks(prompt: str) -> object:
        return "whole answer"

    async with (
        engine(pair(FakeModelClient(chunks, model_id="primary"))) as fo,
        fo.stream("hi", timeout=4.0) as stream,
    ):
        async for _ in stream:
            pass
    (started,) = [e for e in fo.event_store.read() if isinstance(e, CallStarted)]
    assert started.timeout == 4.0
    assert started.stream == "none"  # a stream, with its recovery


class Breaking:
    """A client whose stream sends two chunks, then breaks."""

    model_id = "primary"

    def stream(self, prompt: str) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        yield "one "
        yield "two "
        raise ModelError("connection reset", kind="server")

    async def call(self, prompt: str) -> str:
        return "whole"

    async def health_check(self) -> bool:
        return True


async def test_a_stream_that_broke_records_its_chunks_and_recovery() -> None:
    secondary = FakeModelClient(always("rescued"), model_id="secondary")
    async with engine([Breaking(), secondary]) as fo:
        async with fo.stream("hi", recovery="restart") as stream:
            async for _ in stream:
                pass
        await fo.call("hi")
    events = list(fo.event_store.read())
    streamed, called = [e for e in events if isinstance(e, CallStarted)]
    assert (streamed.stream, called.stream) == ("restart", None)
    assert b"stream" not in encode(called)
    (broke,) = [e for e in events if isinstance(e, AttemptFailed)]
    assert broke.chunks == 2


# -- attempt_failed.retry_after ------------------------------------------------------------


async def test_a_rate_limited_failure_records_its_retry_after() -> None:
    limited = ModelError("slow down", kind="rate_limited", retry_after=3.0)
    primary = FakeModelClient(script(limited, "primary answer"), model_id="primary")
    async with engine(pair(primary), {"base_delay": 0.5}) as fo:
        await fo.call("hi")
    (failed,) = [e for e in fo.event_store.read() if isinstance(e, AttemptFailed)]
    assert failed.retry_after == 3.0


async def test_a_retry_after_too_long_to_wait_is_recorded_on_the_final_failure() -> None:
    clock = FakeClock()
    primary = FakeModelClient(
        failing("rate_limited", "quota", retry_after=30.0), model_id="primary"
    )
    async with engine(pair(primary), {"call_budget": 10, "max_attempts": 3}, clock=clock) as fo:
        assert await fo.call("hi") == "secondary answer"
    events = list(fo.event_store.read())
    (failed,) = [e for e in events if isinstance(e, AttemptFailed)]
    assert failed.final
    assert failed.retry_after == 30.0  # no backoff event holds it: this one must
    assert not [e for e in events if e.type == "backoff"]


async def test_a_failure_without_retry_after_writes_none() -> None:
    primary = FakeModelClient(failing("server"), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 1}) as fo:
        await fo.call("hi")
    (failed,) = [e for e in fo.event_store.read() if isinstance(e, AttemptFailed)]
    assert failed.retry_after is None
    assert b"retry_after" not in encode(failed)


async def test_the_new_fields_survive_a_file_log_and_replay(tmp_path: object) -> None:
    path = f"{tmp_path}/log.sqlite3"
    limited = ModelError("slow down", kind="rate_limited", retry_after=2.0)
    primary = FakeModelClient(script(limited, "ok"), model_id="primary")
    store = SQLiteEventStore(path, durability="buffered")
    async with engine(pair(primary), event_store=store) as fo:
        await fo.call("hi", timeout=7.0)
    live = fo.snapshot()  # with engine_stopped
    with SQLiteEventStore(path, create=False) as reread:
        events = list(reread.read())
        assert replay(reread) == live
    assert [e.timeout for e in events if isinstance(e, CallStarted)] == [7.0]
    assert [e.retry_after for e in events if isinstance(e, AttemptFailed)] == [2.0]


def test_old_events_without_the_fields_still_decode() -> None:
    old = b'{"type":"call_started","at":"2026-01-01T00:00:00Z","call_id":"c","order":["a"]}'
    event = msgspec.json.decode(old, type=CallStarted)
    assert event.timeout is None


# -- the seams -----------------------------------------------------------------------------


def _engine(clients: dict[str, FakeModelClient], **options: object) -> FailoverEngine:
    clock = FakeClock()
    return FailoverEngine(
        clients,
        {"jitter": "none", "max_attempts": 2, "base_delay": 0.01},
        event_store=SQLiteEventStore(),
        sleep=clock.sleep,
        clock=clock,
        timer=options.pop("timer"),  # type: ignore[arg-type]
        wall_clock=lambda: datetime.now(UTC),
        rng=random.Random(1),
        call_ids=iter(f"c{n}" for n in range(10**6)).__next__,
        **options,  # type: ignore[arg-type]
    )


def test_a_retry_budget_counts_retries_it_did_not_decide() -> None:
    now = [0.0]
    budget = RetryBudget(0.0, 0.1, lambda: now[0])  # 1 retry in the 10 s window
    budget.record_retry()  # one made elsewhere (a replay's recorded answer)
    assert not budget.try_retry()
    now[0] = 10.0  # the window moved on
    assert budget.try_retry()


async def test_engines_given_one_retry_budget_share_it() -> None:
    from devs.risks.multi_model_failover.core.clock import LoopTime  # noqa: PLC0415

    now = [0.0]
    shared = RetryBudget(0.0, 0.1, lambda: now[0])  # 1 retry per 10 s, for both engines
    first = _engine(
        {"a": FakeModelClient(failing("server"), model_id="a")},
        timer=LoopTime(),
        retry_budget=shared,
    )
    second = _engine(
        {"b": FakeModelClient(failing("server"), model_id="b")},
        timer=LoopTime(),
        retry_budget=shared,
    )
    try:
        for fo in (first, second):
            with pytest.raises(AllModelsFailedError):
                await fo.call("hi")
        exhausted = [
            e.type
            for fo in (first, second)
            for e in fo.event_store.read()
            if e.type in ("retry_budget_exhausted", "backoff")
        ]
        # The first engine's retry spent the shared budget: the second's was refused.
        assert exhausted == ["backoff", "retry_budget_exhausted"]
    finally:
        for fo in (first, second):
            await fo.aclose()
            fo.event_store.close()


async def test_one_probe_on_demand_records_it_and_judges_health() -> None:
    from devs.risks.multi_model_failover.core.clock import LoopTime  # noqa: PLC0415

    sick = FakeModelClient(always("ok"), model_id="a", probe=False)
    fo = _engine({"a": sick}, timer=LoopTime())
    try:
        await fo.monitor.probe("a")
        (probe,) = [e for e in fo.event_store.read() if isinstance(e, HealthProbe)]
        assert (probe.model_id, probe.ok) == ("a", False)
        assert fo.monitor.state("a") is not HealthState.HEALTHY
        with pytest.raises(ValueError, match="nobody"):
            await fo.monitor.probe("nobody")
        await fo.aclose()
        with pytest.raises(EngineClosedError):
            await fo.monitor.probe("a")
    finally:
        await fo.aclose()
        fo.event_store.close()
