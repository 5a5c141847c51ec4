"""Streams that break after their first chunk (issue 14, items 4-6).

By default a broken stream raises ``StreamInterruptedError``; a caller may opt in to a whole
answer (``recovery="restart"`` or ``"continue"``). Stalls are found by ``idle_timeout`` and a
missing first chunk by ``first_token_timeout``. A finished stream has an ``outcome``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    ErrorKind,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    StreamInterruptedError,
    StreamSwitch,
    Usage,
    VirtualClock,
    replay,
)

pytestmark = pytest.mark.anyio


class Chunks:
    """A client's stream: text chunks, then (optionally) a failure or a stall; the stream's
    own report (usage, finish reason...) is readable once it ends."""

    def __init__(self, texts: list[str], *, then: BaseException | None, stall: bool) -> None:
        self._texts = list(texts)
        self._then = then
        self._stall = stall
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.skipped = 0
        self.closed = False

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> str:
        await anyio.lowlevel.checkpoint()
        if self._texts:
            return self._texts.pop(0)
        if self._then is not None:
            raise self._then
        if self._stall:
            await anyio.sleep_forever()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Streamer:
    """A streaming client: ``texts`` then ``then`` (an error) or a stall; records prompts."""

    def __init__(
        self,
        name: str,
        texts: list[str],
        *,
        then: BaseException | None = None,
        stall: bool = False,
        prefill: bool = False,
        refuse_prefill: bool = False,
        usage: Usage | None = None,
        skipped: int = 0,
    ) -> None:
        self.name = name
        self.texts = texts
        self.then = then
        self.stall = stall
        self.supports_prefill = prefill
        self.refuse_prefill = refuse_prefill
        self.usage = usage
        self.skipped = skipped
        self.prompts: list[Any] = []
        self.streams: list[Chunks] = []

    async def call(self, prompt: Any) -> str:
        raise AssertionError("a streaming client is streamed")  # pragma: no cover

    async def health_check(self) -> bool:
        return True

    def stream(self, prompt: Any) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        prefilled = isinstance(prompt, list) and prompt[-1].get("role") == "assistant"
        if prefilled and self.refuse_prefill:
            chunks = Chunks(
                [], then=ModelError("HTTP 400 prefill", kind="bad_request"), stall=False
            )
        else:
            chunks = Chunks(self.texts, then=self.then, stall=self.stall)
        chunks.usage, chunks.finish_reason, chunks.skipped = self.usage, "stop", self.skipped
        chunks.model, chunks.request_id = f"{self.name}-v1", f"req-{self.name}"
        self.streams.append(chunks)
        return chunks


CUT = ModelError("the stream ended before it was complete", kind="server")


def _engine(*clients: Any, clock: VirtualClock | None = None, **retry: Any) -> MultiModelFailover:
    return MultiModelFailover(
        {c.name: c for c in clients},
        {"jitter": "none", **retry},
        clock=clock,
        durability="buffered",
    )


async def _read(stream: Any) -> list[Any]:
    async with aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


def _types(fo: MultiModelFailover) -> list[str]:
    return [e.type for e in fo.event_store.read() if getattr(e, "call_id", None)]


async def test_a_broken_stream_raises_by_default_and_tries_no_one_else() -> None:
    primary = Streamer("primary", ["Hel", "lo"], then=CUT)
    secondary = Streamer("secondary", ["whole"])
    async with _engine(primary, secondary) as fo:
        got: list[Any] = []

        async def read() -> None:
            async for chunk in fo.stream("hi"):
                got.append(chunk)

        with pytest.raises(StreamInterruptedError) as caught:
            await read()
    assert got == ["Hel", "lo"]
    assert (caught.value.chunks, caught.value.chars, caught.value.kind) == (2, 5, "server")
    assert secondary.prompts == []
    assert _types(fo)[-2:] == ["attempt_failed", "call_failed"]
    failed = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert failed[0].reason == "stream_interrupted"  # type: ignore[union-attr]


async def test_restart_voids_what_was_received_and_finishes_on_the_next_client() -> None:
    primary = Streamer("primary", ["Hel", "lo"], then=CUT)
    secondary = Streamer("secondary", ["Hello", " world"], usage=Usage(input_tokens=3))
    async with _engine(primary, secondary) as fo:
        stream = fo.stream("hi", recovery="restart")
        got = await _read(stream)
    assert got == [
        "Hel",
        "lo",
        StreamSwitch(
            from_model="primary",
            to_model="secondary",
            mode="restart",
            reason=ErrorKind.SERVER,
            discarded_chunks=2,
            discarded_chars=5,
        ),
        "Hello",
        " world",
    ]
    assert secondary.prompts == ["hi"]  # no prefill on a restart
    outcome = stream.outcome
    assert outcome is not None
    assert (outcome.model_id, outcome.attempts, outcome.failovers, outcome.restarts) == (
        "secondary",
        2,
        1,
        1,
    )
    # The serving client's own report, and its usage alone.
    assert (outcome.model, outcome.request_id, outcome.finish_reason) == (
        "secondary-v1",
        "req-secondary",
        "stop",
    )
    assert outcome.usage == Usage(input_tokens=3)
    assert _types(fo) == [
        "call_started",
        "attempt_started",
        "attempt_failed",
        "failover",
        "attempt_started",
        "attempt_succeeded",
        "call_succeeded",
    ]
    assert all(s.closed for s in primary.streams)
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_continue_sends_the_text_so_far_as_a_prefill() -> None:
    primary = Streamer("primary", ["The sky", " is"], then=CUT)
    secondary = Streamer("secondary", [" blue."], prefill=True)
    async with _engine(primary, secondary) as fo:
        got = await _read(fo.stream("Colour of the sky?", recovery="continue"))
    switch = got[2]
    assert isinstance(switch, StreamSwitch)
    assert (switch.mode, switch.discarded_chunks, switch.discarded_chars) == ("continue", 0, 0)
    assert "".join(c for c in got if isinstance(c, str)) == "The sky is blue."
    assert secondary.prompts == [
        [
            {"role": "user", "content": "Colour of the sky?"},
            {"role": "assistant", "content": "The sky is"},
        ]
    ]


async def test_continue_restarts_on_a_client_that_rejects_the_prefill() -> None:
    primary = Streamer("primary", ["The sky"], then=CUT)
    secondary = Streamer("secondary", ["Blue."], prefill=True, refuse_prefill=True)
    async with _engine(primary, secondary) as fo:
        got = await _read(fo.stream("Colour?", recovery="continue"))
    assert got[1] == StreamSwitch(
        from_model="primary",
        to_model="secondary",
        mode="restart",
        reason=ErrorKind.SERVER,
        discarded_chunks=1,
        discarded_chars=7,
    )
    assert got[2:] == ["Blue."]
    assert len(secondary.prompts) == 2  # the prefilled request, then the plain one
    assert secondary.prompts[1] == "Colour?"


async def test_continue_restarts_on_a_client_without_prefill_support() -> None:
    primary = Streamer("primary", ["The sky"], then=CUT)
    secondary = Streamer("secondary", ["Blue."])
    async with _engine(primary, secondary) as fo:
        got = await _read(fo.stream("Colour?", recovery="continue"))
    assert isinstance(got[1], StreamSwitch)
    assert got[1].mode == "restart"
    assert secondary.prompts == ["Colour?"]


async def test_a_rescue_that_fails_everywhere_is_never_reported_complete() -> None:
    primary = Streamer("primary", ["Hel"], then=CUT)
    secondary = Streamer("secondary", ["Hi"], then=CUT)
    tertiary = Streamer("tertiary", [], then=ModelError("HTTP 503", kind="server"))
    async with _engine(primary, secondary, tertiary, max_attempts=1) as fo:
        got: list[Any] = []

        async def read() -> None:
            async for chunk in fo.stream("hi", recovery="restart"):
                got.append(chunk)

        with pytest.raises(StreamInterruptedError) as caught:
            await read()
    assert got[0] == "Hel"
    assert isinstance(got[1], StreamSwitch)
    assert got[2:] == ["Hi"]  # no switch: nobody could take over
    assert caught.value.chunks == 1  # since the last restart
    failed = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert [e.reason for e in failed] == ["stream_interrupted"]  # type: ignore[union-attr]
    assert not [e for e in fo.event_store.read() if e.type == "call_succeeded"]
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_a_stall_after_the_first_chunk_is_found_by_the_idle_timeout() -> None:
    clock = VirtualClock()
    primary = Streamer("primary", ["Hel"], stall=True)
    secondary = Streamer("secondary", ["Hello"])
    async with clock.autojump(), _engine(primary, secondary, clock=clock) as fo:
        with pytest.raises(StreamInterruptedError) as caught:
            await _read(fo.stream("hi"))
        stalled_at = clock()
        assert await _read(fo.stream("hi", recovery="restart")) == [
            "Hel",
            StreamSwitch(
                from_model="primary",
                to_model="secondary",
                mode="restart",
                reason=ErrorKind.TIMEOUT,
                discarded_chunks=1,
                discarded_chars=3,
            ),
            "Hello",
        ]
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "idle_timeout (30s)" in str(caught.value)
    assert stalled_at == pytest.approx(30)  # the default idle_timeout


async def test_no_first_chunk_within_first_token_timeout_fails_over() -> None:
    clock = VirtualClock()
    primary = Streamer("primary", [], stall=True)
    secondary = Streamer("secondary", ["Hello"])
    async with clock.autojump(), _engine(primary, secondary, clock=clock) as fo:
        stream = fo.stream("hi")
        assert await _read(stream) == ["Hello"]
        assert clock() == pytest.approx(30)  # the default first_token_timeout, once
    assert stream.outcome is not None
    assert stream.outcome.failovers == 1
    assert len(primary.prompts) == 1  # a silence is not retried


async def test_skipped_events_are_recorded_with_the_attempt() -> None:
    primary = Streamer("primary", ["a", "b"], skipped=2)
    async with _engine(primary) as fo:
        assert await _read(fo.stream("hi")) == ["a", "b"]
    succeeded = [e for e in fo.event_store.read() if e.type == "attempt_succeeded"]
    assert [e.skipped for e in succeeded] == [2]  # type: ignore[union-attr]


async def test_a_client_that_cannot_stream_reports_its_answer_as_the_outcome() -> None:
    class Whole:
        name = "whole"

        async def call(self, prompt: str) -> ModelResponse:
            return ModelResponse(
                text="all at once",
                model="whole-v2",
                finish_reason="length",
                usage=Usage(input_tokens=1, output_tokens=2),
                request_id="r-1",
            )

        async def health_check(self) -> bool:
            return True

    async with _engine(Whole()) as fo:
        stream = fo.stream("hi")
        assert await _read(stream) == ["all at once"]
    outcome = stream.outcome
    assert outcome is not None
    assert (outcome.model, outcome.finish_reason, outcome.request_id) == (
        "whole-v2",
        "length",
        "r-1",
    )
    assert outcome.usage == Usage(input_tokens=1, output_tokens=2)


async def test_a_stream_left_before_its_end_has_no_outcome() -> None:
    primary = Streamer("primary", ["a", "b", "c"])
    async with _engine(primary) as fo:
        async with fo.stream("hi") as stream:
            async for _ in stream:
                break
        assert stream.outcome is None
    assert _types(fo)[-1] == "call_cancelled"


async def test_cancelled_while_a_rescue_waits_for_its_first_chunk() -> None:
    primary = Streamer("primary", ["Hel"], then=CUT)
    secondary = Streamer("secondary", [], stall=True)
    async with _engine(primary, secondary) as fo:
        got: list[Any] = []
        with anyio.move_on_after(0.2):
            async for chunk in fo.stream("hi", recovery="restart"):
                got.append(chunk)
        assert got == ["Hel"]
        assert _types(fo)[-1] == "call_cancelled"
        assert all(s.closed for s in secondary.streams)
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_an_engine_closing_during_a_rescue_ends_the_stream() -> None:
    primary = Streamer("primary", ["Hel"], then=CUT)
    secondary = Streamer("secondary", [], stall=True)
    fo = _engine(primary, secondary)
    errors: list[BaseException] = []

    async def read() -> None:
        try:
            await _read(fo.stream("hi", recovery="restart"))
        except BaseException as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await anyio.sleep(0.05)
        await fo.aclose(grace=0.05)
    assert [type(e).__name__ for e in errors] == ["EngineClosedError"]
    cancelled = [e for e in fo.event_store.read() if e.type == "call_cancelled"]
    assert [e.reason for e in cancelled] == ["engine_closed"]  # type: ignore[union-attr]


def test_recovery_must_be_a_known_mode() -> None:
    fo = _engine(Streamer("primary", ["a"]))
    with pytest.raises(ValueError, match="recovery must be one of none, restart, continue"):
        fo.stream("hi", recovery="again")  # type: ignore[call-overload]
    anyio.run(fo.aclose)
