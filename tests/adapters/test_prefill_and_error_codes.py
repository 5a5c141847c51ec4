"""Assistant prefill (which clients continue an answer, and the whitespace Anthropic refuses),
and the HTTP status and provider error code every ``ModelError`` carries."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from fake_provider import FakeProvider, Reply, anthropic_error, openai_error, sse
from helpers import ANTHROPIC, NOW, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import ClientConfig, ErrorKind, ModelError
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    HTTPModelClient,
    OpenAIClient,
    TextStream,
    build_client,
)
from devs.risks.multi_model_failover.adapters.clients.errors import (
    ProviderError,
    error_from_response,
    error_from_stream,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    http = wire.client(provider, model_id="primary", timeout=2.0)
    yield http
    await http.aclose()


async def collect(stream: TextStream) -> list[str]:
    async with aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


def continued(answer: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Greet the world."},
        {"role": "assistant", "content": answer},
    ]


# -- prefill -------------------------------------------------------------------------------


async def test_which_clients_continue_a_final_assistant_message() -> None:
    url = "http://127.0.0.1:9"
    clients: list[HTTPModelClient] = [
        AnthropicClient(model="m", base_url=url),
        AnthropicClient(model="m", base_url=url, prefill=False),
        OpenAIClient(model="m", base_url=url),
        OpenAIClient(model="m", base_url=url, prefill=True),
    ]
    try:
        assert [c.supports_prefill for c in clients] == [True, False, False, True]
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize(
    ("kind", "prefill", "expected"),
    [
        ("anthropic", None, True),
        ("anthropic", False, False),
        ("openai", None, False),
        ("openai", True, True),
    ],
)
async def test_prefill_is_a_per_client_config_key(
    kind: str, prefill: bool | None, expected: bool
) -> None:
    fields: dict[str, Any] = {} if prefill is None else {"prefill": prefill}
    built = build_client(ClientConfig(id="x", kind=kind, model="m", **fields))  # type: ignore[arg-type]
    try:
        assert built.supports_prefill is expected
    finally:
        await built.aclose()


@pytest.mark.parametrize(
    ("last", "sent"),
    [
        ({"role": "assistant", "content": "Hello, "}, {"role": "assistant", "content": "Hello,"}),
        (
            {"role": "assistant", "content": [{"type": "text", "text": "Hello,\n\n"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello,"}]},
        ),
        ({"role": "assistant", "content": " \n"}, None),  # nothing left: no prefill at all
        ({"role": "user", "content": "Hi "}, {"role": "user", "content": "Hi "}),
        (
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f"}]},
        ),
    ],
    ids=["text", "blocks", "only whitespace", "not an assistant message", "not text"],
)
async def test_anthropic_cuts_the_trailing_whitespace_of_a_prefill(
    provider: FakeProvider, last: dict[str, Any], sent: dict[str, Any] | None
) -> None:
    provider.script(ANTHROPIC.chat, Reply(body=ANTHROPIC.ok(" world.")))
    earlier = [
        {"role": "user", "content": "Greet the world."},
        {"role": "assistant", "content": "Sure. "},  # only the final message is a prefill
        {"role": "user", "content": "Again."},
    ]
    async with ANTHROPIC.client(provider, model_id="claude") as claude:
        await claude.call([*earlier, last])
    assert provider.requests[0].json()["messages"] == [*earlier, *([sent] if sent else [])]


async def test_openai_sends_a_prefill_as_given(provider: FakeProvider) -> None:
    provider.script(OPENAI.chat, Reply(body=OPENAI.ok(" world.")))
    async with OPENAI.client(provider, model_id="gpt", prefill=True) as gpt:
        await gpt.call(continued("Hello, "))
    assert provider.requests[0].json()["messages"] == continued("Hello, ")


@pytest.mark.parametrize(
    ("chunks", "shown"),
    [
        ([" world", "."], ["world", "."]),  # repeats the cut space: not shown twice
        (["world", "."], ["world", "."]),
        ([" ", " world."], [" world."]),  # one space was cut: a second one is the model's
        (["\n\nworld."], ["\n\nworld."]),  # other whitespace than was cut: the model's
    ],
)
async def test_an_anthropic_continuation_does_not_repeat_the_cut_whitespace(
    provider: FakeProvider, chunks: list[str], shown: list[str]
) -> None:
    provider.script(ANTHROPIC.chat, Reply(events=ANTHROPIC.events(chunks)))
    async with ANTHROPIC.client(provider, model_id="claude") as claude:
        assert await collect(claude.stream(continued("Hello, "))) == shown
    assert provider.requests[0].json()["messages"][-1]["content"] == "Hello,"


# -- status and code -----------------------------------------------------------------------

HTTP_FAULTS = {
    "openai code": (
        Reply(429, openai_error("slow down", type_="requests", code="rate_limit_exceeded")),
        429,
        "rate_limit_exceeded",
    ),
    "openai type only": (
        Reply(500, openai_error("boom", type_="server_error")),
        500,
        "server_error",
    ),
    "anthropic type": (
        Reply(529, anthropic_error("overloaded_error", "Overloaded")),
        529,
        "overloaded_error",
    ),
    "html": (Reply(502, "<html>Bad Gateway</html>"), 502, None),
    "numeric code": (Reply(400, {"error": {"code": 400, "message": "bad"}}), 400, "400"),
}


async def attempt(client: HTTPModelClient, how: str) -> None:
    if how == "call":
        await client.call("hi")
    elif how == "stream":
        await collect(client.stream("hi"))
    else:
        await client.health_check()


@pytest.mark.parametrize(("reply", "status", "code"), HTTP_FAULTS.values(), ids=HTTP_FAULTS)
@pytest.mark.parametrize("how", ["call", "stream", "probe"])
async def test_an_http_error_carries_its_status_and_code(
    wire: Wire,
    provider: FakeProvider,
    client: HTTPModelClient,
    reply: Reply,
    status: int,
    code: str | None,
    how: str,
) -> None:
    provider.script(wire.chat, reply)
    with pytest.raises(ModelError) as caught:
        await attempt(client, how)
    assert (caught.value.status, caught.value.code) == (status, code)


def stream_error(wire: Wire, error: dict[str, Any]) -> str:
    if wire is OPENAI:
        return sse({"error": error})
    return sse({"type": "error", "error": error}, "error")


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (
            {"type": "overloaded_error", "message": "Overloaded"},
            ErrorKind.SERVER,
            "overloaded_error",
        ),
        (
            {"type": "server_error", "code": "upstream_overloaded", "message": "busy"},
            ErrorKind.SERVER,
            "upstream_overloaded",
        ),
        ({"message": "something odd"}, ErrorKind.SERVER, None),
    ],
)
async def test_an_error_event_carries_its_code_and_no_status(
    wire: Wire,
    provider: FakeProvider,
    client: HTTPModelClient,
    error: dict[str, Any],
    kind: ErrorKind,
    code: str | None,
) -> None:
    if wire is ANTHROPIC and "code" in error:
        code = error["type"]  # Anthropic's errors have a type and no code
    provider.script(
        wire.chat, Reply(events=(*wire.events(["Hel"], done=False), stream_error(wire, error)))
    )
    with pytest.raises(ModelError) as caught:
        await collect(client.stream("hi"))
    assert (caught.value.kind, caught.value.status, caught.value.code) == (kind, None, code)


async def test_an_openai_compatible_error_event_given_as_text_is_still_an_error(
    provider: FakeProvider,
) -> None:
    events = (*OPENAI.events(["Hel"], done=False), sse({"error": "model runner crashed"}))
    provider.script(OPENAI.chat, Reply(events=events))
    async with OPENAI.client(provider, model_id="local") as client:
        stream = client.stream("hi")
        with pytest.raises(ModelError) as caught:
            await collect(stream)
    assert caught.value.kind is ErrorKind.SERVER
    assert "model runner crashed" in caught.value.message
    assert stream.skipped == 0


async def test_a_failure_below_http_has_neither(wire: Wire) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with wire.client_class(model="m", base_url=f"http://127.0.0.1:{port}") as client:
        for how in ("call", "stream", "probe"):
            with pytest.raises(ModelError) as caught:
                await attempt(client, how)
            assert (caught.value.kind, caught.value.status, caught.value.code) == (
                ErrorKind.SERVER,
                None,
                None,
            )


def test_a_long_or_secret_code_is_cut_and_scrubbed() -> None:
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8" * 4
    body = b'{"error": {"code": "%s", "message": "m"}}' % ("x" * 500).encode()
    assert len(error_from_response(400, httpx.Headers(), body, now=NOW).code or "") <= 100
    leaked = error_from_stream(ProviderError(code=f"bad key {key}"))
    assert key not in (leaked.code or "")
