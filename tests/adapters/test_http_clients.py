"""The OpenAI-compatible and Anthropic clients against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from fake_provider import FakeProvider, Reply, openai_error
from helpers import ANTHROPIC, ANTHROPIC_KEY, LOCAL_KEY, OPENAI, OPENAI_KEY, WIRES, Wire

from devs.risks.multi_model_failover import ErrorKind, ModelError, ModelResponse, Usage
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    HTTPModelClient,
    OpenAIClient,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    """Each test runs against both wire protocols."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    key = OPENAI_KEY if wire is OPENAI else ANTHROPIC_KEY
    http = wire.client(provider, model_id="primary", api_key=key, timeout=2.0)
    yield http
    await http.aclose()


async def test_openai_call_returns_the_answer_as_served(provider: FakeProvider) -> None:
    provider.script(
        OPENAI.chat,
        Reply(
            body=OPENAI.ok("Paris.", model="gpt-4o-mini-2024-07-18"),
            headers={"x-request-id": "req_42"},
        ),
    )
    async with OpenAIClient(
        model="gpt-4o-mini",
        base_url=provider.url + "/v1/",
        api_key=OPENAI_KEY,
        model_id="primary",
        headers={"OpenAI-Organization": "org-test"},
        params={"temperature": 0.2, "model": "ignored", "stream": True},
    ) as client:
        answer = await client.call("Capital of France?")
    assert answer == ModelResponse(
        text="Paris.",
        model="gpt-4o-mini-2024-07-18",
        finish_reason="stop",
        usage=Usage(input_tokens=11, output_tokens=7),
        request_id="req_42",
        latency=answer.latency,
    )
    assert answer.latency > 0
    sent = provider.requests[0]
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["openai-organization"] == "org-test"
    assert sent.json() == {
        "temperature": 0.2,
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "stream": False,
    }


async def test_anthropic_call_speaks_the_messages_protocol(provider: FakeProvider) -> None:
    provider.script(
        ANTHROPIC.chat, Reply(body=ANTHROPIC.ok("Bonjour."), headers={"request-id": "req_7"})
    )
    chat = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]
    async with AnthropicClient(
        model="claude-haiku-4-5", base_url=provider.url, api_key=ANTHROPIC_KEY, model_id="fallback"
    ) as client:
        answer = await client.call(chat)
    assert (answer.text, answer.model, answer.finish_reason) == (
        "Bonjour.",
        "claude-test-20250101",
        "stop",  # end_turn, normalised
    )
    assert answer.usage == Usage(input_tokens=12, output_tokens=5)
    assert answer.request_id == "req_7"
    sent = provider.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json() == {
        "max_tokens": 1024,
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": False,
        "system": "Answer in French.",
    }


async def test_a_keyless_local_server_gets_no_authorization_header(provider: FakeProvider) -> None:
    provider.script(OPENAI.chat, Reply(body=OPENAI.ok("hi")))
    async with OpenAIClient(model="llama3", base_url=provider.url + "/v1") as client:
        assert (await client.call([{"role": "user", "content": "hi"}])).text == "hi"
        assert client.model_id == "llama3"
    assert "authorization" not in provider.requests[0].headers


async def test_a_prompt_must_be_text_or_chat_messages(client: HTTPModelClient) -> None:
    with pytest.raises(TypeError, match="prompt must be a str or a list of chat messages"):
        await client.call(42)  # type: ignore[arg-type]


async def test_health_check_with_probe_models_asks_for_the_model_list(
    wire: Wire, provider: FakeProvider
) -> None:
    provider.script(
        wire.models,
        Reply(body={"data": []}),
        Reply(401, wire.error("authentication_error", "invalid x-api-key")),
    )
    async with wire.client(provider, model_id="primary", probe="models") as client:
        assert await client.health_check() is True
        with pytest.raises(ModelError) as auth:
            await client.health_check()
    assert auth.value.kind is ErrorKind.AUTH
    assert auth.value.status == 401
    assert provider.hits(wire.chat) == 0


async def test_answers_slower_than_the_timeout_time_out(wire: Wire, provider: FakeProvider) -> None:
    provider.script(wire.chat, then=Reply(hang=True))  # the probe posts a request too
    async with wire.client(provider, model_id="slow", timeout=0.2) as client:
        with pytest.raises(ModelError) as call:
            await client.call("hi")
        with pytest.raises(ModelError) as probe:
            await client.health_check()
    assert call.value.kind is ErrorKind.TIMEOUT
    assert probe.value.kind is ErrorKind.TIMEOUT


def _rate_limited(**headers: str) -> Reply:
    body = openai_error(
        "Rate limit reached for requests", type_="requests", code="rate_limit_exceeded"
    )
    return Reply(429, body, headers=headers)


# (reply, kind, retry_after); bodies in OpenAI's shape are understood by both clients.
FAULTS = {
    "429 retry-after seconds": (_rate_limited(**{"retry-after": "7"}), ErrorKind.RATE_LIMITED, 7.0),
    "429 retry-after http date": (
        _rate_limited(**{"retry-after": "Sat, 01 Mar 2025 12:00:30 GMT"}),
        ErrorKind.RATE_LIMITED,
        30.0,
    ),
    "429 retry-after-ms": (
        _rate_limited(**{"retry-after-ms": "1500", "retry-after": "2"}),
        ErrorKind.RATE_LIMITED,
        1.5,
    ),
    "429 openai reset headers": (
        _rate_limited(
            **{
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-remaining-tokens": "9000",
                "x-ratelimit-reset-tokens": "20ms",
            }
        ),
        ErrorKind.RATE_LIMITED,
        360.0,
    ),
    "429 anthropic reset headers": (
        Reply(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            headers={
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": "2025-03-01T12:00:45Z",
                "anthropic-ratelimit-requests-remaining": "10",
                "anthropic-ratelimit-requests-reset": "2025-03-01T12:00:01Z",
            },
        ),
        ErrorKind.RATE_LIMITED,
        45.0,
    ),
    "429 without a hint": (_rate_limited(), ErrorKind.RATE_LIMITED, None),
    "429 quota exhausted": (
        Reply(429, openai_error("You exceeded your current quota", code="insufficient_quota")),
        ErrorKind.AUTH,
        None,
    ),
    "500": (
        Reply(500, openai_error("The server had an error", type_="server_error")),
        ErrorKind.SERVER,
        None,
    ),
    "502 html": (Reply(502, "<html>Bad Gateway</html>"), ErrorKind.SERVER, None),
    "503": (Reply(503, openai_error("overloaded", type_="server_error")), ErrorKind.SERVER, None),
    "529 overloaded": (
        Reply(
            529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        ),
        ErrorKind.SERVER,
        None,
    ),
    "504": (Reply(504, "gateway timeout"), ErrorKind.TIMEOUT, None),
    "408": (Reply(408, ""), ErrorKind.TIMEOUT, None),
    "401": (
        Reply(401, openai_error("Incorrect API key provided", code="invalid_api_key")),
        ErrorKind.AUTH,
        None,
    ),
    "403": (
        Reply(403, openai_error("not allowed", type_="permission_error")),
        ErrorKind.AUTH,
        None,
    ),
    "404 unknown model": (
        Reply(404, openai_error("The model `gpt-9` does not exist", code="model_not_found")),
        ErrorKind.AUTH,
        None,
    ),
    "400 context length (openai)": (
        Reply(
            400,
            openai_error(
                "This model's maximum context length is 8192 tokens.",
                code="context_length_exceeded",
            ),
        ),
        ErrorKind.CONTEXT_LENGTH,
        None,
    ),
    "400 context length (anthropic)": (
        Reply(
            400,
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 210432 tokens > 200000 maximum",
                },
            },
        ),
        ErrorKind.CONTEXT_LENGTH,
        None,
    ),
    "400 context length (llama.cpp)": (
        Reply(
            400,
            {
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size",
                    "type": "exceed_context_size_error",
                }
            },
        ),
        ErrorKind.CONTEXT_LENGTH,
        None,
    ),
    "413": (Reply(413, "request entity too large"), ErrorKind.CONTEXT_LENGTH, None),
    "400 content filter": (
        Reply(
            400,
            {
                "error": {
                    "code": "content_filter",
                    "message": "The response was filtered due to the prompt triggering "
                    "Azure OpenAI's content management policy.",
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
        ),
        ErrorKind.CONTENT_FILTER,
        None,
    ),
    "400 bad request": (
        Reply(400, openai_error("'messages' is a required property")),
        ErrorKind.BAD_REQUEST,
        None,
    ),
    "422": (Reply(422, {"detail": [{"msg": "field required"}]}), ErrorKind.BAD_REQUEST, None),
    "invalid json": (Reply(200, "{'choices': nope"), ErrorKind.SERVER, None),
    "json of the wrong shape": (Reply(200, {"unexpected": True}), ErrorKind.SERVER, None),
    "dropped mid-body": (Reply(200, OPENAI.ok("x" * 400), cut_at=60), ErrorKind.SERVER, None),
}


@pytest.mark.parametrize(("reply", "kind", "retry_after"), FAULTS.values(), ids=FAULTS.keys())
async def test_each_fault_becomes_its_error_kind(
    wire: Wire,
    provider: FakeProvider,
    client: HTTPModelClient,
    reply: Reply,
    kind: ErrorKind,
    retry_after: float | None,
) -> None:
    provider.script(wire.chat, reply)
    with pytest.raises(ModelError) as caught:
        await client.call("hi")
    assert caught.value.kind is kind
    assert caught.value.retry_after == retry_after
    assert caught.value.model_id == "primary"
    assert len(caught.value.message) <= 300
    assert provider.hits(wire.chat) == 1  # no retry of its own: the engine owns retrying


async def test_an_openai_answer_withheld_by_the_filter_is_content_filter(
    provider: FakeProvider,
) -> None:
    provider.script(
        OPENAI.chat,
        Reply(body=OPENAI.ok("", finish_reason="content_filter")),
        Reply(body={"choices": [{"message": {"content": None, "refusal": "I can't help."}}]}),
    )
    async with OpenAIClient(model="m", base_url=provider.url + "/v1") as client:
        for _ in range(2):
            with pytest.raises(ModelError) as caught:
                await client.call("hi")
            assert caught.value.kind is ErrorKind.CONTENT_FILTER


async def test_an_anthropic_refusal_is_content_filter(provider: FakeProvider) -> None:
    provider.script(ANTHROPIC.chat, Reply(body=ANTHROPIC.ok("", stop_reason="refusal")))
    async with AnthropicClient(model="m", base_url=provider.url) as client:
        with pytest.raises(ModelError) as caught:
            await client.call("hi")
    assert caught.value.kind is ErrorKind.CONTENT_FILTER


async def test_a_refused_connection_is_a_server_error(wire: Wire) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = wire.client_class(model="m", base_url=f"http://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(ModelError) as caught:
            await client.call("hi")
    finally:
        await client.aclose()
    assert caught.value.kind is ErrorKind.SERVER


@pytest.mark.parametrize("key", [OPENAI_KEY, ANTHROPIC_KEY, LOCAL_KEY])
async def test_no_key_in_repr_or_error_even_when_the_server_echoes_it(
    wire: Wire, provider: FakeProvider, key: str
) -> None:
    provider.script(
        wire.chat,
        Reply(401, openai_error(f"Incorrect API key provided: {key}. Header was x-api-key: {key}")),
    )
    client = wire.client(provider, model_id="primary", api_key=key)
    try:
        with pytest.raises(ModelError) as caught:
            await client.call("hi")
    finally:
        await client.aclose()
    for text in (repr(client), str(client), str(caught.value), repr(caught.value)):
        assert key not in text
        assert key[:20] not in text
    assert "[redacted]" in str(caught.value)
