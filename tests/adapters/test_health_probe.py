"""``health_check``: one real request for one token by default, ``GET /models`` on request."""

from __future__ import annotations

from typing import Any

import pytest
from fake_provider import FakeProvider, Reply, openai_error
from helpers import ANTHROPIC, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import ClientConfig, ConfigError, ErrorKind, ModelError
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    OpenAIClient,
    build_client,
)
from devs.risks.multi_model_failover.adapters.config import parse_config

pytestmark = pytest.mark.anyio


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


def refused(wire: Wire) -> dict[str, Any]:
    if wire is OPENAI:
        return OPENAI.ok("", finish_reason="content_filter")
    return ANTHROPIC.ok("", stop_reason="refusal")


async def test_the_default_probe_posts_one_token_of_a_real_request(
    wire: Wire, provider: FakeProvider
) -> None:
    provider.script(wire.chat, Reply(body=wire.ok("pong")))
    params: dict[str, Any] = {"temperature": 0.3, "max_tokens": 256}
    if wire is OPENAI:
        params["stream_options"] = {"include_usage": True}
    async with wire.client(provider, model_id="primary", params=params) as client:
        assert client.probe == "request"
        assert await client.health_check() is True
    (sent,) = provider.requests
    assert (sent.method, sent.path) == ("POST", wire.chat)
    body = sent.json()
    assert body["stream"] is False
    assert body["max_tokens"] == 1
    assert body["temperature"] == 0.3  # the client's other params are kept
    assert body["model"] == f"{wire.name}-model"
    assert body["messages"] == [{"role": "user", "content": "ping"}]
    assert "stream_options" not in body  # refused by OpenAI on a request that does not stream
    assert sent.headers["accept"] == "application/json"
    assert provider.hits(wire.models) == 0


async def test_a_reasoning_model_is_probed_with_max_completion_tokens(
    provider: FakeProvider,
) -> None:
    provider.script(OPENAI.chat, Reply(body=OPENAI.ok("")))
    params = {"max_completion_tokens": 2048, "max_tokens": 99, "reasoning_effort": "low"}
    async with OPENAI.client(provider, model_id="o-series", params=params) as client:
        assert await client.health_check() is True
    body = provider.requests[0].json()
    assert body["max_completion_tokens"] == 1
    assert "max_tokens" not in body
    assert body["reasoning_effort"] == "low"


async def test_an_anthropic_probe_goes_without_extended_thinking(provider: FakeProvider) -> None:
    provider.script(ANTHROPIC.chat, Reply(body=ANTHROPIC.ok("")))
    params = {"max_tokens": 16000, "thinking": {"type": "enabled", "budget_tokens": 10000}}
    async with ANTHROPIC.client(provider, model_id="thinker", params=params) as client:
        assert await client.health_check() is True
    body = provider.requests[0].json()
    assert body["max_tokens"] == 1
    assert "thinking" not in body  # max_tokens 1 is below any thinking budget


@pytest.mark.parametrize("answer", ["empty", "refused"])
async def test_an_empty_or_refused_answer_is_healthy(
    wire: Wire, provider: FakeProvider, answer: str
) -> None:
    provider.script(wire.chat, Reply(body=wire.ok("") if answer == "empty" else refused(wire)))
    async with wire.client(provider, model_id="primary") as client:
        assert await client.health_check() is True


PROBE_FAULTS = {
    "503": (Reply(503, openai_error("overloaded", type_="server_error")), ErrorKind.SERVER, 503),
    "401": (
        Reply(401, openai_error("Incorrect API key", code="invalid_api_key")),
        ErrorKind.AUTH,
        401,
    ),
    "429": (
        Reply(429, openai_error("slow down", code="rate_limit_exceeded")),
        ErrorKind.RATE_LIMITED,
        429,
    ),
    "404 unknown model": (
        Reply(404, openai_error("no such model", code="model_not_found")),
        ErrorKind.AUTH,
        404,
    ),
    "200 not json": (Reply(200, "<html>maintenance</html>"), ErrorKind.SERVER, None),
    "200 of the wrong shape": (Reply(200, {"data": []}), ErrorKind.SERVER, None),
}


@pytest.mark.parametrize(("reply", "kind", "status"), PROBE_FAULTS.values(), ids=PROBE_FAULTS)
async def test_a_failing_probe_says_why(
    wire: Wire, provider: FakeProvider, reply: Reply, kind: ErrorKind, status: int | None
) -> None:
    # GET /models answers: the probe must not believe it.
    provider.script(wire.models, then=Reply(body={"data": []}))
    provider.script(wire.chat, reply)
    async with wire.client(provider, model_id="primary") as client:
        with pytest.raises(ModelError) as caught:
            await client.health_check()
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert caught.value.model_id == "primary"
    assert provider.hits(wire.models) == 0


async def test_a_probe_that_gets_no_answer_times_out(wire: Wire, provider: FakeProvider) -> None:
    provider.script(wire.chat, Reply(hang=True))
    async with wire.client(provider, model_id="slow", health_timeout=0.2) as client:
        with pytest.raises(ModelError) as caught:
            await client.health_check()
    assert caught.value.kind is ErrorKind.TIMEOUT


async def test_probe_models_asks_for_the_model_list_only(
    wire: Wire, provider: FakeProvider
) -> None:
    provider.script(wire.models, Reply(body={"data": []}), Reply(503, "down"))
    async with wire.client(provider, model_id="primary", probe="models") as client:
        assert await client.health_check() is True
        with pytest.raises(ModelError) as caught:
            await client.health_check()
    assert (caught.value.kind, caught.value.status) == (ErrorKind.SERVER, 503)
    assert [(r.method, r.path) for r in provider.requests] == [("GET", wire.models)] * 2


def test_an_unknown_probe_is_refused() -> None:
    with pytest.raises(ValueError, match="probe must be 'request' or 'models', got 'ping'"):
        OpenAIClient(model="m", base_url="http://127.0.0.1:9", probe="ping")  # type: ignore[arg-type]


# -- configuration -------------------------------------------------------------------------


async def test_probe_is_a_per_client_config_key() -> None:
    config = parse_config(
        {
            "multi_model_failover": {
                "clients": [
                    {"id": "a", "kind": "openai", "model": "m", "probe": "models"},
                    {"id": "b", "kind": "anthropic", "model": "m"},
                ]
            }
        }
    )
    assert [c.probe for c in config.clients] == ["models", "request"]
    a, b = (build_client(c) for c in config.clients)
    try:
        assert isinstance(a, OpenAIClient)
        assert isinstance(b, AnthropicClient)
        assert (a.probe, b.probe) == ("models", "request")
    finally:
        await a.aclose()
        await b.aclose()


def document(**entry: Any) -> dict[str, Any]:
    return {"multi_model_failover": {"clients": [{"id": "a", **entry}]}}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": "openai", "model": "m", "probe": "ping"}, "clients[0].probe"),
        ({"kind": "openai", "model": "m", "probe": True}, "clients[0].probe"),
        ({"kind": "openai", "model": "m", "prefill": "yes"}, "clients[0].prefill"),
        (
            {"kind": "callable", "target": "json:dumps", "probe": "models"},
            "probe applies to kind openai and anthropic",
        ),
        (
            {"kind": "callable", "target": "json:dumps", "prefill": True},
            "prefill applies to kind openai and anthropic",
        ),
    ],
)
def test_bad_probe_and_prefill_keys_are_named(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(**entry), source="risks.yaml")
    assert expected in str(caught.value)
    assert "risks.yaml" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"probe": "ping"}, "probe must be 'request' or 'models', got 'ping'"),
        ({"prefill": "yes"}, "prefill must be true or false, got 'yes'"),
    ],
)
def test_python_callers_get_the_same_checks(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        ClientConfig(id="a", kind="openai", model="m", **fields)
