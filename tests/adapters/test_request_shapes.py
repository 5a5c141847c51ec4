"""One request shape (OpenAI's), two wire protocols: the bodies the servers receive, per-call
``params`` merged for that call only, and what is refused before any request is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest
from fake_provider import FakeProvider, Reply
from helpers import ANTHROPIC, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import (
    ClientConfig,
    ConfigError,
    ErrorKind,
    ModelError,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    CallableClient,
    HTTPModelClient,
    OpenAIClient,
    build_client,
)

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    http = wire.client(provider, model_id="primary", params={"temperature": 0.2, "top_p": 0.9})
    yield http
    await http.aclose()


def stop_key(wire: Wire) -> str:
    return "stop" if wire is OPENAI else "stop_sequences"


async def drain(chunks: AsyncIterator[str]) -> str:
    return "".join([chunk async for chunk in chunks])


# -- per-call params ---------------------------------------------------------------------


async def test_per_call_params_merge_over_the_configured_ones_for_that_call_only(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(
        wire.chat,
        Reply(body=wire.ok("a")),
        Reply(events=wire.events(["b"])),
        Reply(body=wire.ok("c")),
    )
    given = MappingProxyType({"temperature": 0.9, "stop": ["END"], "max_tokens": 50})
    assert (await client.call("one", params=given)).text == "a"
    assert await drain(client.stream("two", params={"stop": "STOP"})) == "b"
    assert (await client.call("three")).text == "c"
    first, second, third = (r.json() for r in provider.sent_to(wire.chat))
    assert (first["temperature"], first["top_p"], first["max_tokens"]) == (0.9, 0.9, 50)
    assert first[stop_key(wire)] == ["END"]
    assert second["temperature"] == 0.2
    assert second[stop_key(wire)] == ("STOP" if wire is OPENAI else ["STOP"])
    assert third["temperature"] == 0.2  # nothing of the calls before leaked into this one
    assert stop_key(wire) not in third
    assert third.get("max_tokens") == (None if wire is OPENAI else 1024)
    assert client.params == {"temperature": 0.2, "top_p": 0.9}


async def test_a_per_call_none_leaves_a_configured_option_out(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(body=wire.ok("a")))
    await client.call("hi", params={"temperature": None})
    body = provider.requests[0].json()
    assert "temperature" not in body
    assert body["top_p"] == 0.9


async def test_openai_sends_every_option_as_it_is(provider: FakeProvider) -> None:
    provider.script(OPENAI.chat, Reply(body=OPENAI.ok("ok")))
    params = {
        "seed": 7,
        "logit_bias": {"50256": -100},
        "n": 1,
        "tools": [WEATHER, {"type": "custom", "custom": {"name": "grammar"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
        "vendor_extension": {"anything": [1, 2]},
    }
    async with OPENAI.client(provider, model_id="gpt") as client:
        await client.call("hi", params=params)
    body = provider.requests[0].json()
    assert {k: body[k] for k in params} == params
    assert (body["model"], body["stream"]) == ("openai-model", False)


# -- the Anthropic translation -----------------------------------------------------------


async def anthropic_body(provider: FakeProvider, prompt: Any, **params: Any) -> dict[str, Any]:
    """The body the Anthropic server received for one call of ``prompt`` with ``params``."""
    provider.script(ANTHROPIC.chat, Reply(body=ANTHROPIC.ok("ok")))
    async with ANTHROPIC.client(provider, model_id="claude") as client:
        await client.call(prompt, params=params)
    return provider.requests[-1].json()  # type: ignore[no-any-return]


async def test_anthropic_translates_tools_stop_user_and_max_tokens(
    provider: FakeProvider,
) -> None:
    body = await anthropic_body(
        provider,
        "Weather?",
        tools=[WEATHER, TIME],
        tool_choice="auto",
        stop="###",
        user="user-42",
        max_completion_tokens=300,
        temperature=0.5,
        top_p=0.8,
        n=1,
        top_k=40,
    )
    assert body == {
        "model": "anthropic-model",
        "messages": [{"role": "user", "content": "Weather?"}],
        "stream": False,
        "max_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 40,
        "stop_sequences": ["###"],
        "metadata": {"user_id": "user-42"},
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
            {"name": "get_time", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "auto"},
    }


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
)
async def test_anthropic_translates_each_tool_choice(
    provider: FakeProvider, given: Any, sent: dict[str, Any]
) -> None:
    body = await anthropic_body(provider, "hi", tools=[WEATHER, TIME], tool_choice=given)
    assert body["tool_choice"] == sent


async def test_anthropic_says_parallel_tool_calls_false_in_its_tool_choice(
    provider: FakeProvider,
) -> None:
    alone = await anthropic_body(provider, "hi", tools=[TIME], parallel_tool_calls=False)
    forced = await anthropic_body(
        provider, "hi", tools=[TIME], tool_choice="required", parallel_tool_calls=False
    )
    allowed = await anthropic_body(provider, "hi", tools=[TIME], parallel_tool_calls=True)
    assert alone["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert forced["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "tool_choice" not in allowed


async def test_anthropic_moves_system_and_developer_messages_to_system(
    provider: FakeProvider,
) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather?"},
    ]
    body = await anthropic_body(provider, chat)
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use metric units."},
    ]
    assert body["messages"] == [{"role": "user", "content": "Weather?"}]


MULTI_TURN: list[dict[str, Any]] = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4 C"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": ""}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
    {"role": "user", "content": "And tomorrow?"},
]


async def test_multi_turn_tool_use_goes_both_ways(wire: Wire, provider: FakeProvider) -> None:
    provider.script(wire.chat, Reply(body=wire.ok("Tomorrow: rain.")))
    async with wire.client(provider, model_id="m") as client:
        answer = await client.call(MULTI_TURN, params={"tools": [WEATHER, TIME]})
    assert answer.text == "Tomorrow: rain."
    body = provider.requests[0].json()
    if wire is OPENAI:
        assert body["messages"] == MULTI_TURN  # the protocol's own shape
        return
    assert body["system"] == "You check the weather."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "21 C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "4 C"}],
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_3", "name": "get_time", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_3", "content": "12:00"}],
        },
        {"role": "user", "content": "And tomorrow?"},
    ]


async def test_anthropic_native_options_pass_as_they_are(provider: FakeProvider) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    output_config = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    body = await anthropic_body(
        provider,
        "hi",
        max_tokens=4096,
        thinking=thinking,
        output_config=output_config,
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u1"},
    )
    assert body["thinking"] == thinking
    assert body["output_config"] == output_config
    assert body["stop_sequences"] == ["\n\nHuman:"]
    assert body["metadata"] == {"user_id": "u1"}
    assert body["max_tokens"] == 4096


# -- refused before any request ----------------------------------------------------------

BOTH = "both"
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (which wire, params, what the message must name)
    "tools not a list": (BOTH, {"tools": {"type": "function"}}, "tools"),
    "tool without a name": (BOTH, {"tools": [{"type": "function", "function": {}}]}, "tools[0]"),
    "tool parameters not a schema": (
        BOTH,
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        "tools[0].function.parameters",
    ),
    "unknown tool_choice": (BOTH, {"tools": [TIME], "tool_choice": "always"}, "tool_choice"),
    "tool_choice without tools": (BOTH, {"tool_choice": "required"}, "tool_choice"),
    "tool_choice names no tool": (
        BOTH,
        {"tools": [TIME], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "nope",
    ),
    "bad response_format": (BOTH, {"response_format": {"type": "yaml"}}, "response_format"),
    "json_schema without a name": (
        BOTH,
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
    ),
    "stop not text": (BOTH, {"stop": [1, 2]}, "stop"),
    "per-call model": (BOTH, {"model": "other"}, "model"),
    "per-call stream": (BOTH, {"stream": True}, "stream"),
    "seed": (ANTHROPIC.name, {"seed": 7}, "seed"),
    "logit_bias": (ANTHROPIC.name, {"logit_bias": {"1": 5}}, "logit_bias"),
    "n above 1": (ANTHROPIC.name, {"n": 3}, "n=3"),
    "penalties": (
        ANTHROPIC.name,
        {"presence_penalty": 1, "frequency_penalty": 1},
        "frequency_penalty, presence_penalty",
    ),
    "unknown key": (ANTHROPIC.name, {"vendor_extension": 1}, "vendor_extension"),
    "stream_options": (
        ANTHROPIC.name,
        {"stream_options": {"include_usage": True}},
        "stream_options",
    ),
    "custom tool": (
        ANTHROPIC.name,
        {"tools": [{"type": "custom", "custom": {"name": "g"}}]},
        "tools[0]",
    ),
    "stop and stop_sequences": (ANTHROPIC.name, {"stop": "x", "stop_sequences": ["y"]}, "stop"),
    "both max token keys": (
        ANTHROPIC.name,
        {"max_tokens": 5, "max_completion_tokens": 6},
        "max_completion_tokens",
    ),
    "user and metadata.user_id": (
        ANTHROPIC.name,
        {"user": "a", "metadata": {"user_id": "b"}},
        "metadata.user_id",
    ),
    "json and tools": (
        ANTHROPIC.name,
        {"response_format": {"type": "json_object"}, "tools": [TIME]},
        "tools",
    ),
    "json and thinking": (
        ANTHROPIC.name,
        {"response_format": {"type": "json_object"}, "thinking": {"type": "enabled"}},
        "thinking",
    ),
    "json schema of a list": (
        ANTHROPIC.name,
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "l", "schema": {"type": "array"}},
            }
        },
        "response_format.json_schema.schema",
    ),
}


def refusal_cases() -> list[Any]:
    cases = []
    for name, (which, params, named) in REFUSED.items():
        for wire in WIRES:
            if which in (BOTH, wire.name):
                cases.append(pytest.param(wire, params, named, id=f"{wire.name}-{name}"))
    return cases


@pytest.mark.parametrize(("wire", "params", "named"), refusal_cases())
async def test_an_option_the_protocol_cannot_express_is_refused_before_sending(
    wire: Wire, provider: FakeProvider, params: dict[str, Any], named: str
) -> None:
    provider.script(wire.chat, then=Reply(body=wire.ok("should not be asked")))
    async with wire.client(provider, model_id="m") as client:
        with pytest.raises(ModelError) as called:
            await client.call("hi", params=params)
        with pytest.raises(ModelError) as streamed:
            client.stream("hi", params=params)  # checked at once, before the first chunk
    for caught in (called.value, streamed.value):
        assert caught.kind is ErrorKind.BAD_REQUEST
        assert named in caught.message
        assert caught.model_id == "m"
    assert provider.requests == []


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (ANTHROPIC, "messages[1].tool_calls[0].function.arguments is not valid JSON"),
        (ANTHROPIC, "messages[2].tool_call_id"),
    ],
    ids=["arguments not json", "tool result without id"],
)
async def test_anthropic_refuses_a_tool_turn_it_cannot_translate(
    wire: Wire, provider: FakeProvider, message: str
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    if "tool_call_id" in message:
        call["function"]["arguments"] = "{}"  # type: ignore[index]
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "done"},
    ]
    async with wire.client(provider, model_id="m") as client:
        with pytest.raises(ModelError) as caught:
            await client.call(chat)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert message in caught.value.message
    assert provider.requests == []


@pytest.mark.parametrize(
    ("cls", "params", "named"),
    [
        (AnthropicClient, {"seed": 1}, "seed"),
        (AnthropicClient, {"tools": "get_time"}, "tools"),
        (OpenAIClient, {"tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_configured_params_are_checked_when_the_client_is_built(
    cls: type[HTTPModelClient], params: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        cls(model="m", base_url="http://127.0.0.1:9", params=params)
    kind = "openai" if cls is OpenAIClient else "anthropic"
    config = ClientConfig(
        id="x", kind=kind, model="m", base_url="http://127.0.0.1:9", params=params
    )
    with pytest.raises(ConfigError, match=f"client 'x': .*{named}"):
        build_client(config)


# -- the callable client -----------------------------------------------------------------


async def test_a_function_taking_params_gets_them_and_one_without_refuses_them() -> None:
    seen: list[Any] = []

    async def with_params(prompt: str, *, params: Any = None) -> str:
        seen.append(params)
        return "with"

    def plain(prompt: str) -> str:
        seen.append("plain")
        return "plain"

    def keywords(prompt: str, **options: Any) -> str:
        seen.append(options)
        return "kw"

    given = {"temperature": 0, "tools": []}
    assert await CallableClient(with_params).call("hi", params=given) == "with"
    assert await CallableClient(with_params).call("hi") == "with"
    assert await CallableClient(keywords).call("hi", params=given) == "kw"
    assert await CallableClient(plain).call("hi") == "plain"
    assert await CallableClient(plain).call("hi", params={}) == "plain"
    with pytest.raises(ModelError) as caught:
        await CallableClient(plain, model_id="fn").call("hi", params=given)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert "temperature, tools" in caught.value.message
    assert caught.value.model_id == "fn"
    assert seen == [given, None, {"params": given}, "plain", "plain"]


async def test_params_reach_a_function_the_engine_calls() -> None:
    """Through the engine: its per-call params arrive at the function."""
    got: list[Any] = []

    def answer(prompt: str, params: Any = None) -> str:
        got.append(dict(params or {}))
        return "ok"

    fo = MultiModelFailover([CallableClient(answer, model_id="fn")])
    try:
        assert await fo.call("hi", params={"temperature": 0.1}) == "ok"
        assert await fo.call("hi") == "ok"
    finally:
        await fo.aclose()
    assert got == [{"temperature": 0.1}, {}]
