"""Opt-in stream recovery: a stream that breaks after its first chunk is restarted on the next
model (the caller is told in-band that what it got is void), or continued where the next
model accepts a prefill; when no model can finish, it is still ``StreamInterruptedError``."""

from __future__ import annotations

import time
from typing import Any, Literal

import pytest

from devs.risks.multi_model_failover import ErrorKind, StreamSwitch, Usage
from devs.risks.multi_model_failover.core.streaming import StreamInterruptedError

from .catalogue import cut, stall
from .provider import FaultyProvider, message_text
from .support import OTHER, PROMPT, WIRES, drain, events_of, failover

pytestmark = pytest.mark.anyio

STALL_TIMEOUT = 0.5  # the clients' read timeout in the stall tests
ANSWER = "The quick brown fox jumps over the lazy dog."
ASKED = [{"role": "user", "content": PROMPT}]


def switches(items: list[Any]) -> list[StreamSwitch]:
    return [item for item in items if isinstance(item, StreamSwitch)]


def answer_of(items: list[Any]) -> str:
    """The answer as a caller must read the stream: a restart voids the text before it."""
    text = ""
    for item in items:
        if isinstance(item, StreamSwitch):
            if item.mode == "restart":
                text = ""
        else:
            text += item
    return text


@pytest.mark.parametrize(
    ("anyio_backend", "wire", "fault"),
    [
        ("asyncio", "openai", "cut"),
        ("asyncio", "anthropic", "cut"),
        ("trio", "openai", "cut"),
        ("asyncio", "openai", "stall"),
        ("asyncio", "anthropic", "stall"),
        ("trio", "anthropic", "stall"),
    ],
)
async def test_a_broken_stream_restarts_on_the_next_model_when_asked(
    provider: FaultyProvider, wire: str, fault: str
) -> None:
    primary = provider.add("primary", "Alpha beta gamma delta epsilon zeta")
    fallback = provider.add("fallback", "One two three four five")
    primary.fail_always(cut(after=2) if fault == "cut" else stall(after=2))
    async with failover(
        provider, (primary, wire), (fallback, OTHER[wire]), timeout=STALL_TIMEOUT
    ) as fo:
        stream = fo.stream(PROMPT, recovery="restart")
        started = time.monotonic()
        items = await drain(stream)
        took = time.monotonic() - started
        (switch,) = switches(items)
        at = items.index(switch)
        assert items[:at] == ["Alpha", " beta"]
        assert "".join(items[at + 1 :]) == fallback.answer
        assert (switch.from_model, switch.to_model, switch.mode) == (
            "primary",
            "fallback",
            "restart",
        )
        assert (switch.discarded_chunks, switch.discarded_chars) == (2, len("Alpha beta"))
        assert switch.reason == (ErrorKind.SERVER if fault == "cut" else ErrorKind.TIMEOUT)
        outcome = stream.outcome
        assert outcome is not None
        assert (outcome.model_id, outcome.restarts, outcome.finish_reason) == (
            "fallback",
            1,
            "stop",
        )
        assert outcome.model == "fallback-2025-01-01"
        assert events_of(fo, "call_failed") == []
        (done,) = events_of(fo, "call_succeeded")
        assert done.model_id == "fallback"
    (asked,) = provider.calls("primary")
    (answered,) = provider.calls("fallback")
    assert asked.streamed
    assert answered.streamed
    assert answered.messages == ASKED
    if fault == "stall":
        assert STALL_TIMEOUT * 0.95 <= answered.at - asked.at < STALL_TIMEOUT * 3
        assert took < STALL_TIMEOUT * 3


async def test_a_restarted_streams_usage_is_the_serving_models_alone(
    provider: FaultyProvider,
) -> None:
    # Anthropic reports the input tokens in message_start, before the stream breaks.
    primary = provider.add("primary", "Alpha beta gamma delta", usage=(100, 50))
    fallback = provider.add("fallback", "One two three four five", usage=(7, 5))
    primary.fail_always(cut(after=2))
    async with failover(provider, (primary, "anthropic"), (fallback, "openai")) as fo:
        stream = fo.stream(PROMPT, recovery="restart")
        items = await drain(stream)
        assert answer_of(items) == fallback.answer
        assert stream.outcome is not None
        assert stream.outcome.usage == Usage(input_tokens=7, output_tokens=5)
    (answered,) = provider.calls("fallback")
    assert answered.body["stream_options"]["include_usage"] is True


# -- continuation -----------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
async def test_a_model_that_accepts_prefill_continues_the_answer(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", ANSWER)
    fallback = provider.add("fallback", ANSWER)
    primary.fail_always(cut(after=2))
    async with failover(provider, (primary, wire), (fallback, "anthropic")) as fo:
        stream = fo.stream(PROMPT, recovery="continue")
        items = await drain(stream)
        (switch,) = switches(items)
        at = items.index(switch)
        assert "".join(items[:at]) == "The quick"
        assert "".join(items[:at]) + "".join(items[at + 1 :]) == ANSWER
        assert answer_of(items) == ANSWER
        assert (switch.from_model, switch.to_model, switch.mode) == (
            "primary",
            "fallback",
            "continue",
        )
        assert (switch.discarded_chunks, switch.discarded_chars) == (0, 0)
        assert stream.outcome is not None
        assert stream.outcome.model_id == "fallback"
        assert stream.outcome is not None
        assert stream.outcome.finish_reason == "stop"
    (continued,) = provider.calls("fallback")
    assert continued.messages[:-1] == ASKED
    assert continued.messages[-1]["role"] == "assistant"
    assert message_text(continued.messages[-1]) == "The quick"
    assert continued.fault is None


@pytest.mark.parametrize("wire", WIRES)
async def test_a_model_that_rejects_prefill_gets_a_restart(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", ANSWER)
    fallback = provider.add("fallback", ANSWER, reject_prefill=True)
    primary.fail_always(cut(after=2))
    async with failover(provider, (primary, wire), (fallback, "anthropic")) as fo:
        stream = fo.stream(PROMPT, recovery="continue")
        items = await drain(stream)
        assert answer_of(items) == ANSWER
        last = switches(items)[-1]
        assert (last.to_model, last.mode) == ("fallback", "restart")
        assert items[-1] != last  # the restarted answer follows its notice
        assert stream.outcome is not None
        assert stream.outcome.model_id == "fallback"
        assert events_of(fo, "call_failed") == []
    rejected, restarted = provider.calls("fallback")
    assert rejected.fault == "prefill_rejected"
    assert rejected.messages[-1]["role"] == "assistant"
    assert (restarted.fault, restarted.messages) == (None, ASKED)


async def test_a_model_without_prefill_support_gets_a_restart(provider: FaultyProvider) -> None:
    primary = provider.add("primary", ANSWER)
    fallback = provider.add("fallback", ANSWER)
    primary.fail_always(cut(after=2))
    async with failover(provider, (primary, "anthropic"), (fallback, "openai")) as fo:
        stream = fo.stream(PROMPT, recovery="continue")
        items = await drain(stream)
        (switch,) = switches(items)
        assert (switch.mode, switch.discarded_chunks, switch.discarded_chars) == (
            "restart",
            2,
            len("The quick"),
        )
        assert answer_of(items) == ANSWER
    (answered,) = provider.calls("fallback")
    assert answered.messages == ASKED


@pytest.mark.parametrize("recovery", ["restart", "continue"])
async def test_when_no_model_can_finish_the_stream_is_interrupted(
    provider: FaultyProvider, recovery: Literal["restart", "continue"]
) -> None:
    primary = provider.add("primary", ANSWER)
    fallback = provider.add("fallback", ANSWER)
    primary.fail_always(cut(after=2))
    fallback.fail_always(stall(after=1))
    async with failover(
        provider, (primary, "openai"), (fallback, "anthropic"), timeout=STALL_TIMEOUT
    ) as fo:
        received: list[Any] = []
        with pytest.raises(StreamInterruptedError):
            await drain(fo.stream(PROMPT, recovery=recovery), received)
        assert answer_of(received) != ANSWER
        (failed,) = events_of(fo, "call_failed")
        assert failed.reason == "stream_interrupted"
        assert events_of(fo, "call_succeeded") == []
    assert len(provider.calls("primary")) == 1
    assert len(provider.calls("fallback")) == 1
