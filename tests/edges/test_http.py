"""Edge cases of the HTTP clients against a real local server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
from tests.adapters.fake_provider import (
    FakeProvider,
    Reply,
    anthropic_events,
    openai_events,
    sse,
)

from devs.risks.multi_model_failover import ErrorKind, ModelError, MultiModelFailover, replay
from devs.risks.multi_model_failover.adapters.clients import AnthropicClient, OpenAIClient

pytestmark = pytest.mark.anyio
CHAT = "/chat/completions"
KEY = "sk-proj-" + "Zq8" * 16


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    p = FakeProvider().start()
    yield p
    p.stop()


def _openai(p: FakeProvider, **kw: Any) -> OpenAIClient:
    return OpenAIClient(model="gpt-test", base_url=p.url, api_key=KEY, timeout=5, **kw)


async def _read(stream: Any) -> list[Any]:
    async with aclosing(stream) as chunks:
        return [c async for c in chunks]


def _chunk(text: str) -> str:
    return sse({"choices": [{"index": 0, "delta": {"content": text}}]})


async def test_a_provider_error_code_quoting_the_prompt_does_not_reach_the_caller(
    provider: FakeProvider,
) -> None:
    """Docs: "A provider error that quotes the prompt ... has the quote replaced by
    `[prompt]` before it reaches ... the caller's exception". `ModelError.code` keeps it."""
    prompt = "tell me the launch codes for the secret base"
    provider.script(
        CHAT,
        then=Reply(400, {"error": {"message": "invalid", "type": "x", "code": prompt}}),
    )
    client = _openai(provider)
    fo = MultiModelFailover({"a": client}, durability="buffered")
    async with client, fo:
        with pytest.raises(ModelError) as raised:
            await fo.call(prompt)
    assert raised.value.status == 400
    assert "launch codes" not in (raised.value.code or ""), raised.value.code


async def test_a_key_in_the_error_code_is_scrubbed(provider: FakeProvider) -> None:
    provider.script(CHAT, then=Reply(401, {"error": {"message": "bad key", "code": KEY}}))
    client = _openai(provider)
    async with client:
        with pytest.raises(ModelError) as raised:
            await client.call("hi")
    assert raised.value.status == 401
    assert raised.value.kind is ErrorKind.AUTH
    assert KEY[:12] not in (raised.value.code or "")
    assert KEY[8:20] not in repr(raised.value) + str(raised.value)


async def test_five_malformed_in_a_row_twice_is_fine_six_is_not(provider: FakeProvider) -> None:
    bad = [
        "data: {not json\n\n",
        'data: {"choices": 5}\n\n',
        "data: null\n\n",
        'data: {"choices":[{"delta":{"content":7}}]}\n\n',
        "data: \n\n",
    ]
    good = openai_events(["a"], done=False)
    provider.script(
        CHAT,
        Reply(events=(*good, *bad, _chunk("b"), *bad, *openai_events([], done=True)[1:])),
        Reply(events=(*good, *bad, "data: [1,2]\n\n", *openai_events([], done=True)[1:])),
    )
    client = _openai(provider)
    async with client:
        stream = client.stream("hi")
        assert await _read(stream) == ["a", "b"]
        assert stream.skipped == 10
        with pytest.raises(ModelError) as raised:
            await _read(client.stream("hi"))
    assert raised.value.kind is ErrorKind.SERVER
    assert raised.value.status is None


async def test_a_stream_of_only_malformed_events_and_done_is_not_a_complete_answer(
    provider: FakeProvider,
) -> None:
    """Doc ambiguity: every content event was malformed (3 skipped, none decoded), then
    [DONE]: the stream ends as a complete, empty answer (no finish_reason)."""
    provider.script(
        CHAT, Reply(events=("data: {oops\n\n", "data: {oops\n\n", "data: {oops\n\n", sse("[DONE]")))
    )
    client = _openai(provider)
    fo = MultiModelFailover({"a": client}, durability="buffered")  # no probe loop
    got: Any = None
    async with client:
        try:
            got = await _read(fo.stream("hi"))
        except ModelError:
            pass
        finally:
            await fo.aclose()
    assert got is None, f"complete answer {got!r} (skipped {fo.metrics().calls_succeeded})"


async def test_usage_chunk_without_choices_and_user_stream_options(provider: FakeProvider) -> None:
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    no_choices = sse({"usage": {"prompt_tokens": 4, "completion_tokens": 5}})
    events = (
        *openai_events(["x"], done=False),
        sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        usage,
        no_choices,
        sse("[DONE]"),
    )
    provider.script(CHAT, Reply(events=events), Reply(events=events), Reply(events=events))
    mine = _openai(provider, params={"stream_options": {"include_usage": False, "x": 1}})
    none = _openai(provider, params={"stream_options": None})
    default = _openai(provider)
    async with mine, none, default:
        s = default.stream("hi")
        assert await _read(s) == ["x"]
        assert (s.usage.input_tokens, s.usage.output_tokens) == (4, 5)
        await _read(mine.stream("hi"))
        await _read(none.stream("hi"))
    bodies = [r.json() for r in provider.sent_to(CHAT)]
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert bodies[1]["stream_options"] == {"include_usage": False, "x": 1}
    assert "stream_options" not in bodies[2]


@pytest.mark.parametrize(
    ("body", "healthy"),
    [
        (b"<html>ok</html>", False),
        ({"choices": None}, False),
        ({"error": {"message": "down"}}, False),
        ({"choices": []}, True),
        ([], False),
        (b"", False),
    ],
)
async def test_a_probe_answering_200_with_garbage(
    provider: FakeProvider, body: Any, healthy: bool
) -> None:
    provider.script(CHAT, then=Reply(200, body))
    client = _openai(provider, params={"stream_options": {"include_usage": True}})
    async with client:
        if healthy:
            assert await client.health_check() is True
        else:
            with pytest.raises(ModelError) as raised:
                await client.health_check()
            assert raised.value.kind is ErrorKind.SERVER
    assert "stream_options" not in provider.sent_to(CHAT)[0].json()
    assert provider.sent_to(CHAT)[0].json()["max_tokens"] == 1


async def test_anthropic_continuation_after_whitespace_prefill(provider: FakeProvider) -> None:
    provider.script(CHAT, Reply(events=openai_events(["Hello ", "big "], done=False), drop=True))
    provider.script("/v1/messages", Reply(events=anthropic_events(["  world"])))
    first = _openai(provider)
    second = AnthropicClient(model="claude-test", base_url=provider.url, api_key="x", timeout=5)
    fo = MultiModelFailover({"o": first, "a": second}, durability="buffered")  # no probes
    async with first, second:
        try:
            got = await _read(fo.stream("hi", recovery="continue"))
        finally:
            await fo.aclose()
    text = "".join(c for c in got if isinstance(c, str))
    sent = provider.sent_to("/v1/messages")[0].json()["messages"]
    assert sent[-1] == {"role": "assistant", "content": "Hello big"}
    assert text in {"Hello big  world", "Hello big world"}, repr(text)
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_in_stream_error_event_has_no_status_and_the_type_as_code(
    provider: FakeProvider,
) -> None:
    provider.script(
        "/v1/messages",
        Reply(
            events=(
                *anthropic_events(["a"], done=False),
                sse(
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                    "error",
                ),
            )
        ),
    )
    client = AnthropicClient(model="claude-test", base_url=provider.url, api_key="x", timeout=5)
    async with client:
        with pytest.raises(ModelError) as raised:
            await _read(client.stream("hi"))
    assert (raised.value.kind, raised.value.status, raised.value.code) == (
        ErrorKind.SERVER,
        None,
        "overloaded_error",
    )


async def test_stream_error_events_shapes(provider: FakeProvider) -> None:
    """An OpenAI-compatible error event whose `error` has an unexpected shape."""
    provider.script(
        CHAT,
        Reply(
            events=(
                *openai_events(["a"], done=False),
                sse({"error": {"message": "boom", "code": 1.5}}),
            )
        ),
    )
    client = _openai(provider)
    async with client:
        with pytest.raises(ModelError) as raised:
            await _read(client.stream("hi"))
    # skipped as malformed, then the stream ended without its end: server, incomplete
    assert raised.value.kind is ErrorKind.SERVER
