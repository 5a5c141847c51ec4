"""The HTTP clients' ``TextStream`` through a real engine: the stream's outcome, skipped events
in the log, and a broken stream continued by a client that supports prefill."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest
from fake_provider import FakeProvider, Reply, sse
from helpers import ANTHROPIC, OPENAI, FakeSleep, events_of

from devs.risks.multi_model_failover import MultiModelFailover, StreamSwitch, Usage
from devs.risks.multi_model_failover.adapters.clients import HTTPModelClient

pytestmark = pytest.mark.anyio

POLICY = {"max_attempts": 2, "base_delay": 0.5, "jitter": "none"}


async def collect(stream: Any) -> list[Any]:
    async with aclosing(stream) as items:
        return [item async for item in items]


def openai_chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
    return sse({"id": "chatcmpl-7", "model": "gpt-4o-2024-08-06", "choices": choices, **extra})


OPENAI_WITH_USAGE = (
    openai_chunk([{"index": 0, "delta": {"content": "Hello, "}}]),
    "data: {not json\n\n",  # skipped, counted, logged
    openai_chunk([{"index": 0, "delta": {"content": "world"}}]),
    openai_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    openai_chunk([], usage={"prompt_tokens": 8, "completion_tokens": 3}),
    sse("[DONE]"),
)


@pytest.fixture
async def pair(
    make_provider: Callable[[], FakeProvider],
) -> AsyncIterator[tuple[list[HTTPModelClient], FakeProvider, FakeProvider]]:
    """An OpenAI ``primary`` (no prefill) before an Anthropic ``fallback`` (prefill)."""
    primary, fallback = make_provider(), make_provider()
    clients = [
        OPENAI.client(primary, model_id="primary", timeout=2.0),
        ANTHROPIC.client(fallback, model_id="fallback", timeout=2.0),
    ]
    yield clients, primary, fallback
    for client in clients:
        await client.aclose()


Pair = tuple[list[HTTPModelClient], FakeProvider, FakeProvider]


async def test_a_stream_outcome_says_what_the_provider_reported(pair: Pair) -> None:
    clients, primary, _ = pair
    primary.script(OPENAI.chat, Reply(events=OPENAI_WITH_USAGE, headers={"x-request-id": "r-1"}))
    fo = MultiModelFailover(clients, POLICY, sleep=FakeSleep())  # no health loop: no probes
    try:
        stream = fo.stream("Greet the world.")
        assert await collect(stream) == ["Hello, ", "world"]
    finally:
        await fo.aclose()
    outcome = stream.outcome
    assert outcome is not None
    assert (outcome.model_id, outcome.model, outcome.finish_reason, outcome.request_id) == (
        "primary",
        "gpt-4o-2024-08-06",
        "stop",
        "r-1",
    )
    assert outcome.usage == Usage(input_tokens=8, output_tokens=3)
    (succeeded,) = events_of(fo, "attempt_succeeded")
    assert succeeded.skipped == 1
    sent = primary.sent_to(OPENAI.chat)[0].json()
    assert sent["stream_options"] == {"include_usage": True}


async def test_a_cut_stream_is_continued_by_a_client_that_takes_a_prefill(pair: Pair) -> None:
    clients, primary, fallback = pair
    primary.script(OPENAI.chat, then=Reply(events=OPENAI_WITH_USAGE[:1], drop=True))
    fallback.script(ANTHROPIC.chat, Reply(events=ANTHROPIC.events([" world", "!"])))
    fo = MultiModelFailover(clients, POLICY, sleep=FakeSleep())
    try:
        stream = fo.stream("Greet the world.", recovery="continue")
        items = await collect(stream)
    finally:
        await fo.aclose()
    switch = items[1]
    assert isinstance(switch, StreamSwitch)
    assert (switch.from_model, switch.to_model, switch.mode) == ("primary", "fallback", "continue")
    # The space Anthropic refuses at the end of a prefill is not repeated by the continuation.
    assert "".join(i for i in items if isinstance(i, str)) == "Hello, world!"
    (continued,) = fallback.sent_to(ANTHROPIC.chat)
    assert continued.json()["messages"] == [
        {"role": "user", "content": "Greet the world."},
        {"role": "assistant", "content": "Hello,"},
    ]
    assert stream.outcome is not None
    assert stream.outcome.model_id == "fallback"
    assert stream.outcome.finish_reason == "stop"  # end_turn, normalised
