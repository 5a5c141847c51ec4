"""Answers with tool calls: the same ``ToolCall``s from both wire protocols, whole or streamed,
and JSON answers (``response_format``) read back from Anthropic's forced tool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from fake_provider import (
    FakeProvider,
    Reply,
    anthropic_message,
    anthropic_tool_events,
    anthropic_tool_use,
    openai_completion,
    openai_tool_calls,
    openai_tool_events,
    sse,
)
from helpers import ANTHROPIC, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import ModelError, MultiModelFailover
from devs.risks.multi_model_failover.adapters.clients import HTTPModelClient
from devs.risks.multi_model_failover.core.responses import ModelResponse, ToolCall

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
CALLS = [
    ("call_1", "get_weather", {"city": "Paris", "days": 2, "note": 'été \u2028 "quoted"'}),
    ("call_2", "get_time", {}),
]
EXPECTED = (
    ToolCall(
        id="call_1",
        name="get_weather",
        arguments=msgspec.json.encode(CALLS[0][2]).decode(),
    ),
    ToolCall(id="call_2", name="get_time", arguments="{}"),
)
PARAMS = {"tools": [WEATHER, TIME], "tool_choice": "auto"}


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    http = wire.client(provider, model_id="primary")
    yield http
    await http.aclose()


def tool_answer(wire: Wire, calls: Any = CALLS, text: str | None = None) -> dict[str, Any]:
    if wire is OPENAI:
        return openai_tool_calls(calls, text=text)
    return anthropic_tool_use(calls, text=text)


def tool_events(wire: Wire, calls: Any = CALLS, text: str = "") -> tuple[str, ...]:
    if wire is OPENAI:
        return openai_tool_events(calls, text=text)
    return anthropic_tool_events(calls, text=text)


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


async def test_an_answer_with_tool_calls_reads_the_same_from_both_protocols(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(body=tool_answer(wire, text="Let me look.")))
    answer = await client.call("Weather in Paris, and the time?", params=PARAMS)
    assert answer.tool_calls == EXPECTED
    assert (answer.text, answer.finish_reason) == ("Let me look.", "tool_calls")
    # The arguments are JSON a caller decodes as it is.
    assert msgspec.json.decode(answer.tool_calls[0].arguments) == CALLS[0][2]


async def test_an_answer_without_tool_calls_has_none(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(body=wire.ok("Sunny.")))
    answer = await client.call("Weather?", params=PARAMS)
    assert (answer.text, answer.tool_calls) == ("Sunny.", ())


async def test_streamed_tool_calls_are_assembled_once_the_stream_ended(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(events=tool_events(wire, text="Checking.")))
    stream = client.stream("Weather in Paris, and the time?", params=PARAMS)
    assert await collect(stream) == ["Checking."]  # the text; the calls are not text
    assert stream.tool_calls == EXPECTED
    assert stream.finish_reason == "tool_calls"


async def test_a_stream_cut_before_its_end_exposes_no_tool_calls(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(events=tool_events(wire)[:-2], drop=True))
    stream = client.stream("Weather?", params=PARAMS)
    with pytest.raises(ModelError):
        await collect(stream)
    assert stream.tool_calls == ()


async def test_openai_fragments_of_two_calls_are_assembled_by_index(
    provider: FakeProvider,
) -> None:
    def delta(*parts: dict[str, Any]) -> str:
        return sse({"choices": [{"index": 0, "delta": {"tool_calls": list(parts)}}]})

    events = (
        delta(
            {"index": 0, "id": "call_a", "function": {"name": "get_weather", "arguments": ""}},
            {"index": 1, "id": "call_b", "function": {"name": "get_time", "arguments": "{"}},
        ),
        delta({"index": 0, "function": {"arguments": '{"city":'}}),
        delta({"index": 1, "function": {"arguments": "}"}}),
        delta({"index": 0, "function": {"arguments": '"Oslo"}'}}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        sse("[DONE]"),
    )
    provider.script(OPENAI.chat, Reply(events=events))
    async with OPENAI.client(provider, model_id="gpt") as client:
        stream = client.stream("Weather in Oslo?", params=PARAMS)
        assert await collect(stream) == []
    assert stream.tool_calls == (
        ToolCall(id="call_a", name="get_weather", arguments='{"city":"Oslo"}'),
        ToolCall(id="call_b", name="get_time", arguments="{}"),
    )


async def test_openai_calls_sent_whole_at_one_index_stay_apart(provider: FakeProvider) -> None:
    """Some compatible servers send each call whole, every one at index 0 (or none)."""

    def whole(id_: str, name: str) -> str:
        call = {"index": 0, "id": id_, "function": {"name": name, "arguments": "{}"}}
        return sse({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})

    no_index = {"id": "c3", "function": {"name": "get_time", "arguments": "{}"}}
    events = (
        whole("c1", "get_weather"),
        whole("c2", "get_time"),
        sse({"choices": [{"index": 0, "delta": {"tool_calls": [no_index]}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        sse("[DONE]"),
    )
    provider.script(OPENAI.chat, Reply(events=events))
    async with OPENAI.client(provider, model_id="gpt") as client:
        stream = client.stream("hi", params=PARAMS)
        await collect(stream)
    assert [(c.id, c.name) for c in stream.tool_calls] == [
        ("c1", "get_weather"),
        ("c2", "get_time"),
        ("c3", "get_time"),
    ]


async def test_an_openai_call_without_an_id_gets_one(provider: FakeProvider) -> None:
    answer = openai_completion("", finish_reason="tool_calls")
    answer["choices"][0]["message"]["tool_calls"] = [
        {"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}  # an object, not text
    ]
    provider.script(OPENAI.chat, Reply(body=answer))
    async with OPENAI.client(provider, model_id="local") as client:
        got = await client.call("time?", params={"tools": [TIME]})
    assert got.tool_calls == (ToolCall(id="call_0", name="get_time", arguments='{"tz":"UTC"}'),)


# -- response_format ---------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
}
ANSWER = {"city": "Paris", "celsius": 21.5}


async def test_openai_passes_a_json_schema_natively_and_returns_the_text(
    provider: FakeProvider,
) -> None:
    provider.script(
        OPENAI.chat, Reply(body=openai_completion(msgspec.json.encode(ANSWER).decode()))
    )
    async with OPENAI.client(provider, model_id="gpt") as client:
        answer = await client.call("Weather in Paris?", params={"response_format": JSON_SCHEMA})
    assert provider.requests[0].json()["response_format"] == JSON_SCHEMA
    assert msgspec.json.decode(answer.text) == ANSWER
    assert (answer.finish_reason, answer.tool_calls) == ("stop", ())


async def test_anthropic_answers_a_json_schema_through_one_forced_tool(
    provider: FakeProvider,
) -> None:
    provider.script(
        ANTHROPIC.chat, Reply(body=anthropic_tool_use([("toolu_9", "weather", ANSWER)]))
    )
    async with ANTHROPIC.client(provider, model_id="claude") as client:
        answer = await client.call("Weather in Paris?", params={"response_format": JSON_SCHEMA})
    body = provider.requests[0].json()
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Give your answer as the input of this tool.",
            "input_schema": SCHEMA,
            "strict": True,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    assert "response_format" not in body
    assert answer.text == msgspec.json.encode(ANSWER).decode()
    assert (answer.finish_reason, answer.tool_calls) == ("stop", ())


async def test_anthropic_answers_json_object_through_a_permissive_tool(
    provider: FakeProvider,
) -> None:
    provider.script(
        ANTHROPIC.chat, Reply(body=anthropic_tool_use([("toolu_1", "json_answer", {"a": [1]})]))
    )
    async with ANTHROPIC.client(provider, model_id="claude") as client:
        answer = await client.call(
            "JSON please", params={"response_format": {"type": "json_object"}}
        )
    body = provider.requests[0].json()
    assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [
        ("json_answer", {"type": "object"})
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer"}
    assert (answer.text, answer.finish_reason, answer.tool_calls) == ('{"a":[1]}', "stop", ())


async def test_anthropic_streams_the_json_answer_as_text(provider: FakeProvider) -> None:
    events = anthropic_tool_events([("toolu_9", "weather", ANSWER)], size=5)
    provider.script(ANTHROPIC.chat, Reply(events=events), Reply(body=anthropic_message("x")))
    async with ANTHROPIC.client(provider, model_id="claude") as client:
        stream = client.stream("Weather in Paris?", params={"response_format": JSON_SCHEMA})
        chunks = await collect(stream)
        assert len(chunks) > 1  # as it arrives, not at the end
        assert msgspec.json.decode("".join(chunks)) == ANSWER
        assert (stream.finish_reason, stream.tool_calls) == ("stop", ())
        # The next call has no response_format: nothing of it is left on the client.
        plain = await client.call("hi")
    assert "tools" not in provider.requests[1].json()
    assert plain.text == "x"


# -- through the engine ------------------------------------------------------------------


async def test_one_request_shape_fails_over_across_the_two_protocols(
    make_provider: Callable[[], FakeProvider],
) -> None:
    """OpenAI fails; the same params go to Anthropic, translated; the answers read alike."""
    first, second = make_provider(), make_provider()
    first.script(OPENAI.chat, then=Reply(503, {"error": {"message": "overloaded"}}))
    second.script(ANTHROPIC.chat, then=Reply(body=anthropic_tool_use(CALLS)))
    gpt = OPENAI.client(first, model_id="gpt")
    claude = ANTHROPIC.client(second, model_id="claude")
    fo = MultiModelFailover([gpt, claude], {"max_attempts": 1, "jitter": "none"})
    try:
        answer = await fo.call("Weather in Paris, and the time?", params=PARAMS)
    finally:
        await fo.aclose()
        await gpt.aclose()
        await claude.aclose()
    assert isinstance(answer, ModelResponse)
    assert answer.tool_calls == EXPECTED
    (to_openai,) = first.sent_to(OPENAI.chat)
    (to_anthropic,) = second.sent_to(ANTHROPIC.chat)
    assert to_openai.json()["tools"] == [WEATHER, TIME]
    assert [t["name"] for t in to_anthropic.json()["tools"]] == ["get_weather", "get_time"]
    assert to_anthropic.json()["tool_choice"] == {"type": "auto"}


async def test_the_calls_of_an_answer_go_back_as_the_next_turn(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    """A caller answers the tool calls it got; the server sees them as its own protocol's."""
    provider.script(wire.chat, Reply(body=tool_answer(wire)), Reply(body=wire.ok("Sunny, 12:00.")))
    chat: list[dict[str, Any]] = [{"role": "user", "content": "Weather, and the time?"}]
    first = await client.call(chat, params=PARAMS)
    chat.append(
        {
            "role": "assistant",
            "content": first.text or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in first.tool_calls
            ],
        }
    )
    chat += [{"role": "tool", "tool_call_id": c.id, "content": "done"} for c in first.tool_calls]
    assert (await client.call(chat, params=PARAMS)).text == "Sunny, 12:00."
    sent = provider.requests[1].json()["messages"]
    if wire is OPENAI:
        assert sent == chat
        return
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in CALLS],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": i, "content": "done"} for i, _, _ in CALLS
            ],
        },
    ]
