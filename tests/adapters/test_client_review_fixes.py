"""The clients after the hostile review of issue 15: a body that cannot be encoded, options
spelled two ways on Anthropic, a callable's configured params, refusals (streamed, billed),
Anthropic's cached prompt tokens and a tool input given whole at its block's start."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from fake_provider import FakeProvider, Reply, sse
from helpers import ANTHROPIC, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import (
    ConfigError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    Usage,
)
from devs.risks.multi_model_failover.adapters.clients import CallableClient, TextStream

pytestmark = pytest.mark.anyio
ONE_TRY = {"max_attempts": 1, "jitter": "none"}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


# -- a value JSON cannot hold --------------------------------------------------------------


class Opaque:
    """A value msgspec cannot encode (as numpy's scalars, without numpy)."""


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"temperature": Opaque()}, "temperature"),
        ({"stop": ["END"], "metadata": {"user_id": [Opaque()]}}, "metadata"),
    ],
)
async def test_a_value_json_cannot_hold_is_refused_before_sending_and_spares_the_model(
    wire: Wire, provider: FakeProvider, params: dict[str, Any], named: str
) -> None:
    if wire is OPENAI and "metadata" in params:
        params = {"stop": ["END"], "user": [Opaque()]}  # OpenAI sends any key as it is
        named = "user"
    provider.script(wire.chat, then=Reply(body=wire.ok("fine")))
    client = wire.client(provider, model_id="m")
    fo = MultiModelFailover([client], {"max_attempts": 3, "base_delay": 0.001})
    try:
        with pytest.raises(ModelError) as by_call:
            await fo.call("hi", params=params)
        with pytest.raises(ModelError) as by_client_stream:
            client.stream("hi", params=params)  # refused when built, not at the first chunk
        assert provider.hits(wire.chat) == 0
        assert fo.states == {"m": HealthState.HEALTHY}
        assert (await fo.call("plain")).text == "fine"
    finally:
        await fo.aclose()
        await client.aclose()
    for error in (by_call.value, by_client_stream.value):
        assert error.kind is ErrorKind.BAD_REQUEST
        assert f"params {named}:" in error.message
        assert "cannot be sent as JSON" in error.message
    failed = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert [(e.error_kind, e.counts) for e in failed] == [(ErrorKind.BAD_REQUEST, False)]


async def test_a_configured_value_json_cannot_hold_is_refused_when_the_client_is_built(
    wire: Wire, provider: FakeProvider
) -> None:
    with pytest.raises(ValueError, match=r"m: params top_p: cannot be sent as JSON"):
        wire.client(provider, model_id="m", params={"top_p": Opaque()})


# -- Anthropic: one option, two spellings ---------------------------------------------------


async def anthropic_body(
    provider: FakeProvider, configured: dict[str, Any], given: dict[str, Any] | None
) -> dict[str, Any]:
    provider.script(ANTHROPIC.chat, then=Reply(body=ANTHROPIC.ok("ok")))
    async with ANTHROPIC.client(provider, model_id="an", params=configured) as client:
        await client.call("hi", params=given)
        assert client.params == configured  # untouched by the call
    return provider.sent_to(ANTHROPIC.chat)[-1].json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("configured", "given", "sent"),
    [
        ({"stop": "###"}, {"stop_sequences": ["END"]}, {"stop_sequences": ["END"]}),
        ({"max_tokens": 500}, {"max_completion_tokens": 50}, {"max_tokens": 50}),
        ({"max_completion_tokens": 500}, {"max_tokens": None}, {"max_tokens": 1024}),
        ({"stop_sequences": ["###"]}, {"stop": None}, {}),
        ({"user": "ops"}, {"metadata": {"user_id": "alice"}}, {"metadata": {"user_id": "alice"}}),
        ({"user": "ops"}, {"user": None}, {}),
        ({"user": "ops"}, None, {"metadata": {"user_id": "ops"}}),
        (
            {"metadata": {"user_id": "ops", "team": "sre"}},
            {"user": "alice"},
            {"metadata": {"user_id": "alice", "team": "sre"}},
        ),
        (
            {"metadata": {"user_id": "ops", "team": "sre"}},
            {"user": None},
            {"metadata": {"team": "sre"}},
        ),
    ],
    ids=[
        "stop_sequences over stop",
        "max_completion_tokens over max_tokens",
        "None unsets the other spelling",
        "None unsets stop_sequences",
        "metadata over user",
        "None unsets the configured user",
        "configured user alone",
        "user keeps the rest of metadata",
        "None user keeps the rest of metadata",
    ],
)
async def test_a_call_overrides_a_configured_option_however_either_spells_it(
    provider: FakeProvider,
    configured: dict[str, Any],
    given: dict[str, Any] | None,
    sent: dict[str, Any],
) -> None:
    body = await anthropic_body(provider, configured, given)
    options = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
    assert options == {"max_tokens": 1024, **sent}


@pytest.mark.parametrize(
    ("configured", "given", "named"),
    [
        ({}, {"stop": "x", "stop_sequences": ["y"]}, "stop and stop_sequences"),
        ({"stop": "x", "stop_sequences": ["y"]}, {}, "stop and stop_sequences"),
        ({"max_tokens": 1}, {"max_tokens": 5, "max_completion_tokens": 6}, "max_completion"),
        ({}, {"user": "a", "metadata": "b"}, "params metadata must be an object"),
    ],
)
async def test_one_source_giving_both_spellings_is_still_refused(
    provider: FakeProvider, configured: dict[str, Any], given: dict[str, Any], named: str
) -> None:
    if not given:  # configured: refused when the client is built
        with pytest.raises(ValueError, match=named):
            ANTHROPIC.client(provider, model_id="an", params=configured)
        return
    async with ANTHROPIC.client(provider, model_id="an", params=configured) as client:
        with pytest.raises(ModelError) as caught:
            await client.call("hi", params=given)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert named in caught.value.message
    assert provider.hits(ANTHROPIC.chat) == 0


# -- a callable's configured params ----------------------------------------------------------


async def test_a_callable_gets_its_configured_params_a_new_dict_each_call() -> None:
    seen: list[dict[str, Any]] = []

    def answer(prompt: str, params: Mapping[str, Any] | None = None) -> str:
        assert isinstance(params, dict)
        seen.append(dict(params))
        params["scribbled"] = True  # the function's own copy: the next call never sees it
        return "ok"

    configured = {"temperature": 0.5, "seed": 1}
    client = CallableClient(answer, model_id="fn", params=configured)
    assert await client.call("a") == "ok"
    assert await client.call("b", params={"seed": None, "top_p": 0.9}) == "ok"
    assert await client.call("c", params={}) == "ok"
    assert seen == [
        {"temperature": 0.5, "seed": 1},
        {"temperature": 0.5, "seed": None, "top_p": 0.9},  # None as given: the function's
        {"temperature": 0.5, "seed": 1},
    ]
    assert client.params == configured


async def test_params_for_a_function_that_takes_none_are_refused_at_start_up() -> None:
    def plain(prompt: str) -> str:
        return prompt

    with pytest.raises(ValueError, match="fn: params seed configured for a function"):
        CallableClient(plain, model_id="fn", params={"seed": 1})
    document = {
        "multi_model_failover": {
            "clients": [
                {
                    "id": "local",
                    "kind": "callable",
                    "target": "builtins:repr",
                    "params": {"temperature": 0.5},
                }
            ]
        }
    }
    with pytest.raises(ConfigError, match=r"client 'local': params temperature given to"):
        MultiModelFailover.from_config(document, env={})


# -- refusals: streamed, and billed --------------------------------------------------------


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def test_an_openai_stream_with_text_and_a_refusal_field_is_an_answer(
    provider: FakeProvider,
) -> None:
    """As for an answer given whole: a refusal counts only when the model said nothing."""
    events = (
        _openai_chunk({"role": "assistant", "content": "", "refusal": None}),
        _openai_chunk({"content": "Sure."}),
        _openai_chunk({"refusal": "but not that part"}),
        _openai_chunk({}, "stop"),
        sse("[DONE]"),
    )
    provider.script(OPENAI.chat, Reply(events=events))
    async with OPENAI.client(provider, model_id="oa") as client:
        assert await collect(client.stream("hi")) == ["Sure."]


async def test_an_openai_stream_refused_without_a_finish_reason_is_content_filter(
    provider: FakeProvider,
) -> None:
    usage = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    events = (_openai_chunk({"refusal": "I can't "}), usage, _openai_chunk({"refusal": "help."}))
    provider.script(OPENAI.chat, Reply(events=(*events, sse("[DONE]"))))
    async with OPENAI.client(provider, model_id="oa") as client:
        with pytest.raises(ModelError) as caught:
            await collect(client.stream("hi"))
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert caught.value.message == "the model refused: I can't help."
    assert caught.value.usage == Usage(input_tokens=9, output_tokens=4)


async def test_a_refusal_without_usage_carries_none(wire: Wire, provider: FakeProvider) -> None:
    body = wire.ok("", **({"finish_reason": "content_filter"} if wire is OPENAI else {}))
    if wire is ANTHROPIC:
        body["stop_reason"] = "refusal"
    del body["usage"]
    provider.script(wire.chat, Reply(body=body))
    async with wire.client(provider, model_id="m") as client:
        with pytest.raises(ModelError) as caught:
            await client.call("hi")
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert caught.value.usage is None


async def test_an_anthropic_streamed_refusal_is_billed_in_the_log(provider: FakeProvider) -> None:
    start = {"id": "msg_1", "content": [], "usage": {"input_tokens": 30, "output_tokens": 1}}
    events = (
        sse({"type": "message_start", "message": start}, "message_start"),
        sse(
            {"type": "message_delta", "delta": {"stop_reason": "refusal"},
             "usage": {"output_tokens": 3}},
            "message_delta",
        ),
    )  # fmt: skip
    provider.script(ANTHROPIC.chat, Reply(events=events))
    client = ANTHROPIC.client(provider, model_id="an")
    fo = MultiModelFailover([client], ONE_TRY, prices={"an": {"input": 3.0, "output": 15.0}})
    try:
        with pytest.raises(ModelError) as caught:
            async with fo.stream("hi") as stream:
                await collect(stream)
        metrics = fo.metrics()
    finally:
        await fo.aclose()
        await client.aclose()
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    (failed,) = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert (failed.input_tokens, failed.output_tokens) == (30, 3)
    assert (metrics.input_tokens, metrics.output_tokens) == (30, 3)
    assert metrics.cost == pytest.approx((30 * 3.0 + 3 * 15.0) / 1e6)


# -- Anthropic's cached prompt tokens, streamed ----------------------------------------------


def _stream_with_usage(*deltas: dict[str, Any]) -> tuple[str, ...]:
    start_usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 3000,
    }
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
    return (
        sse({"type": "message_start", "message": {"id": "m", "content": [], "usage": start_usage}}),
        sse(text),
        *(
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage})
            for usage in deltas
        ),
        sse({"type": "message_stop"}),
    )


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (({"output_tokens": 6},), Usage(input_tokens=3210, output_tokens=6)),
        (({"input_tokens": 10, "output_tokens": 6},), Usage(input_tokens=3210, output_tokens=6)),
        (
            ({"output_tokens": 6}, {"cache_read_input_tokens": 0, "output_tokens": 8}),
            Usage(input_tokens=210, output_tokens=8),
        ),
    ],
    ids=["output only", "input again without caches", "a later count replaces"],
)
async def test_streamed_cached_prompt_tokens_are_input_whatever_each_event_repeats(
    provider: FakeProvider, deltas: tuple[dict[str, Any], ...], expected: Usage
) -> None:
    provider.script(ANTHROPIC.chat, Reply(events=_stream_with_usage(*deltas)))
    async with ANTHROPIC.client(provider, model_id="an") as client:
        stream = client.stream("hi")
        assert await collect(stream) == ["x"]
    assert stream.usage == expected


# -- a tool input given whole at its block's start -------------------------------------------


def _tool_stream(
    name: str, whole: dict[str, Any], pieces: tuple[str, ...] = (), *, block_stop: bool = True
) -> tuple[str, ...]:
    block = {"type": "tool_use", "id": "toolu_1", "name": name, "input": whole}
    events = [
        sse({"type": "message_start", "message": {"id": "m", "content": []}}),
        sse({"type": "content_block_start", "index": 0, "content_block": block}),
    ]
    events += [
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": piece}})
        for piece in pieces
    ]  # fmt: skip
    if block_stop:
        events.append(sse({"type": "content_block_stop", "index": 0}))
    events.append(sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}))
    events.append(sse({"type": "message_stop"}))
    return tuple(events)


async def _streamed(provider: FakeProvider, params: dict[str, Any]) -> tuple[str, TextStream]:
    async with ANTHROPIC.client(provider, model_id="an") as client:
        stream = client.stream("hi", params=params)
        return "".join(await collect(stream)), stream


async def test_pieces_after_a_whole_input_are_the_input_not_added_to_it(
    provider: FakeProvider,
) -> None:
    pieces = ('{"city": ', '"Oslo"}')
    provider.script(ANTHROPIC.chat, Reply(events=_tool_stream("get_weather", {"x": 1}, pieces)))
    text, stream = await _streamed(provider, {"tools": [WEATHER]})
    assert text == ""
    assert [(c.name, json.loads(c.arguments)) for c in stream.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]


@pytest.mark.parametrize("answer", [False, True], ids=["tool call", "JSON answer"])
async def test_a_whole_input_is_kept_when_the_block_never_says_it_stopped(
    provider: FakeProvider, answer: bool
) -> None:
    name = "triage" if answer else "get_weather"
    provider.script(
        ANTHROPIC.chat, Reply(events=_tool_stream(name, {"city": "Rome"}, block_stop=False))
    )
    spec = {"name": name, "schema": {"type": "object"}}
    params: dict[str, Any] = (
        {"response_format": {"type": "json_schema", "json_schema": spec}}
        if answer
        else {"tools": [WEATHER]}
    )
    text, stream = await _streamed(provider, params)
    if answer:
        assert json.loads(text) == {"city": "Rome"}
        assert stream.tool_calls == ()
        assert stream.finish_reason == "stop"
    else:
        assert text == ""
        assert [json.loads(c.arguments) for c in stream.tool_calls] == [{"city": "Rome"}]
