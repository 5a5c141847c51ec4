"""``fo.stream`` with scripted in-process streams: deadlines, odd clients, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from helpers import FakeSleep, event_types, events_of

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    DeadlineExceededError,
    ErrorKind,
    HealthState,
    ModelResponse,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.core.streaming import (
    StreamInterruptedError,
)

pytestmark = pytest.mark.anyio

Step = str | float | BaseException  # a chunk, a wait (seconds), or a failure


class ScriptedStream:
    """A streaming client: each ``stream`` call plays the next script."""

    def __init__(self, model_id: str, *scripts: list[Step]) -> None:
        self.model_id = model_id
        self.scripts = list(scripts)
        self.opened = 0

    async def stream(self, prompt: Any) -> AsyncIterator[str]:
        script = self.scripts[min(self.opened, len(self.scripts) - 1)]
        self.opened += 1
        for step in script:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, float):
                await anyio.sleep(step)
            else:
                yield step

    async def call(self, prompt: Any) -> str:
        raise AssertionError("a streaming client is streamed, not called")

    async def health_check(self) -> bool:
        return True


class AwaitedStream(ScriptedStream):
    """``stream`` as a coroutine that returns the iterator (some SDKs do this)."""

    async def stream(self, prompt: Any) -> AsyncIterator[str]:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        return super().stream(prompt)


def engine(*clients: Any, **policy: Any) -> MultiModelFailover:
    return MultiModelFailover(
        list(clients), {"max_attempts": 2, "jitter": "none", **policy}, sleep=FakeSleep()
    )


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


async def test_a_slow_first_chunk_is_a_timeout_then_a_failover() -> None:
    slow = ScriptedStream("slow", [10.0, "never"])
    fo = engine(slow, ScriptedStream("quick", ["a", "b"]), first_token_timeout=0.05)
    try:
        assert await collect(fo.stream("hi")) == ["a", "b"]
    finally:
        await fo.aclose()
    kinds = [(e.model_id, e.error_kind) for e in events_of(fo, "attempt_failed")]
    assert kinds == [("slow", ErrorKind.TIMEOUT)]  # a silence fails over at once


async def test_the_call_timeout_bounds_the_wait_for_the_first_chunk() -> None:
    fo = engine(ScriptedStream("slow", [10.0]))
    try:
        with pytest.raises(DeadlineExceededError):
            await collect(fo.stream("hi", timeout=0.05))
        with pytest.raises(ValueError, match="timeout"):
            await collect(fo.stream("hi", timeout=0))
    finally:
        await fo.aclose()
    assert events_of(fo, "attempt_failed")[0].error_kind is ErrorKind.DEADLINE
    assert fo.states["slow"] is HealthState.HEALTHY  # the caller's deadline blames no model
    with pytest.raises(RuntimeError, match="closed"):
        await collect(fo.stream("hi"))


async def test_any_exception_before_the_first_chunk_is_retried() -> None:
    flaky = AwaitedStream("flaky", [RuntimeError("socket gone")], ["ok"])
    fo = engine(flaky)
    try:
        assert await collect(fo.stream("hi")) == ["ok"]
    finally:
        await fo.aclose()
    (failed,) = events_of(fo, "attempt_failed")
    assert failed.error_kind is ErrorKind.UNKNOWN
    assert "socket gone" in failed.message
    assert flaky.opened == 2


async def test_a_timeout_mid_stream_keeps_its_kind() -> None:
    fo = engine(ScriptedStream("m", ["par", "tial", TimeoutError("read timed out")]))
    try:
        with pytest.raises(StreamInterruptedError) as caught:
            await collect(fo.stream("hi"))
    finally:
        await fo.aclose()
    assert (caught.value.kind, caught.value.chunks, caught.value.chars) == (ErrorKind.TIMEOUT, 2, 7)


async def test_the_attempt_cap_stops_before_a_failover() -> None:
    fo = engine(
        ScriptedStream("a", [RuntimeError("x")]), ScriptedStream("b", ["b"]), max_total_attempts=2
    )
    try:
        with pytest.raises(AllModelsFailedError):
            await collect(fo.stream("hi"))
    finally:
        await fo.aclose()
    assert events_of(fo, "failover") == []
    assert events_of(fo, "call_failed")[0].reason == "max_total_attempts"


async def test_clients_that_cannot_stream_answer_in_one_chunk() -> None:
    class Answers:
        def __init__(self, model_id: str, answer: Any) -> None:
            self.model_id, self.answer = model_id, answer

        def call(self, prompt: Any) -> Any:  # sync: the engine runs it in a thread
            return self.answer

        def health_check(self) -> bool:
            return True

    response = ModelResponse(text="from a response", model="m")
    for answer, chunks in [(response, ["from a response"]), (42, ["42"]), ("", [])]:
        fo = engine(Answers("plain", answer))
        try:
            assert await collect(fo.stream("hi")) == chunks
        finally:
            await fo.aclose()
        assert "call_succeeded" in event_types(fo)


async def test_cancelling_mid_stream_blames_no_model() -> None:
    fo = engine(ScriptedStream("m", ["first", 10.0, "never"]))
    got: list[str] = []
    try:
        with anyio.move_on_after(0.05):
            async with aclosing(fo.stream("hi")) as chunks:
                async for chunk in chunks:
                    got.append(chunk)
    finally:
        await fo.aclose()
    assert got == ["first"]
    assert "call_cancelled" in event_types(fo)
    assert events_of(fo, "attempt_failed") == []
    assert fo.states["m"] is HealthState.HEALTHY
