"""Streams by default: a break after the first chunk is ``StreamInterruptedError`` (never a
short answer reported complete), a malformed event is skipped, and a finished stream tells
its outcome."""

from __future__ import annotations

import time

import pytest

from devs.risks.multi_model_failover import ErrorKind, Usage
from devs.risks.multi_model_failover.core.streaming import StreamInterruptedError

from .catalogue import cut, malformed, stall, unavailable
from .provider import FaultyProvider
from .support import OTHER, PROMPT, WIRES, drain, events_of, failover

pytestmark = pytest.mark.anyio

STALL_TIMEOUT = 0.5  # the clients' read timeout in the stall tests


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> str:
    """The primary's wire protocol; the fallback speaks the other one."""
    return str(request.param)


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_a_broken_stream_is_interrupted_by_default(
    provider: FaultyProvider, wire: str, fault: str
) -> None:
    primary = provider.add("primary", "Alpha beta gamma delta epsilon zeta")
    fallback = provider.add("fallback", "One two three four five")
    primary.fail_always(cut(after=2) if fault == "cut" else stall(after=2))
    async with failover(
        provider, (primary, wire), (fallback, OTHER[wire]), timeout=STALL_TIMEOUT
    ) as fo:
        received: list[object] = []
        started = time.monotonic()
        with pytest.raises(StreamInterruptedError) as caught:
            await drain(fo.stream(PROMPT), received)
        took = time.monotonic() - started
        error = caught.value
        assert received == ["Alpha", " beta"]
        assert (error.chunks, error.chars) == (2, len("Alpha beta"))
        assert error.model_id == "primary"
        assert error.kind is (ErrorKind.SERVER if fault == "cut" else ErrorKind.TIMEOUT)
        (failed,) = events_of(fo, "call_failed")
        assert failed.reason == "stream_interrupted"
        assert events_of(fo, "call_succeeded") == []
    (asked,) = provider.calls("primary")
    assert asked.streamed
    assert provider.seen("fallback", chat=None) == []
    if fault == "stall":
        assert STALL_TIMEOUT * 0.95 <= took < STALL_TIMEOUT * 3


async def test_a_malformed_event_is_skipped_and_the_stream_completes(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", "Alpha beta gamma delta epsilon zeta")
    fallback = provider.add("fallback", "One two three four five")
    primary.fail_always(malformed(after=2))
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        chunks = await drain(fo.stream(PROMPT))
        assert "".join(chunks) == primary.answer
        (succeeded,) = events_of(fo, "attempt_succeeded")
        assert (succeeded.model_id, succeeded.skipped) == ("primary", 1)
        assert events_of(fo, "attempt_failed") == []
        assert events_of(fo, "failover") == []
        (done,) = events_of(fo, "call_succeeded")
        assert done.model_id == "primary"
    assert [s.fault for s in provider.calls("primary")] == ["malformed after 2"]
    assert provider.seen("fallback", chat=None) == []


async def test_a_finished_stream_tells_its_outcome(provider: FaultyProvider, wire: str) -> None:
    primary = provider.add("primary", "Alpha beta gamma delta", usage=(23, 9))
    fallback = provider.add("fallback", "One two three four five")
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        stream = fo.stream(PROMPT)
        chunks = await drain(stream)
        assert "".join(chunks) == primary.answer
        outcome = stream.outcome
        assert outcome is not None
        (started,) = events_of(fo, "call_started")
        assert outcome.call_id == started.call_id
        assert (outcome.model_id, outcome.attempts, outcome.failovers, outcome.restarts) == (
            "primary",
            1,
            0,
            0,
        )
        assert outcome.usage == Usage(input_tokens=23, output_tokens=9)
        assert outcome.finish_reason == "stop"
        assert outcome.model == "primary-2025-01-01"
        assert outcome.latency > 0
    (asked,) = provider.calls("primary")
    assert asked.streamed
    assert outcome.request_id is not None
    assert asked.request_id in outcome.request_id
    if wire == "openai":
        assert asked.body["stream_options"]["include_usage"] is True


async def test_a_failed_over_streams_usage_is_the_serving_models_alone(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", "Alpha beta gamma delta", usage=(100, 50))
    fallback = provider.add("fallback", "One two three four five", usage=(5, 3))
    primary.fail_always(unavailable())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        stream = fo.stream(PROMPT)
        chunks = await drain(stream)
        assert "".join(chunks) == fallback.answer
        outcome = stream.outcome
        assert outcome is not None
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 3, 1)
        assert outcome.usage == Usage(input_tokens=5, output_tokens=3)
        assert outcome.finish_reason == "stop"
        assert outcome.model == "fallback-2025-01-01"
    assert [s.fault for s in provider.calls("primary")] == ["503", "503"]
    (answered,) = provider.calls("fallback")
    assert outcome.request_id is not None
    assert answered.request_id in outcome.request_id
