"""Clients from configuration entries: every problem found at start-up, no secret shown."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ANTHROPIC_KEY, OPENAI_KEY

from devs.risks.multi_model_failover import ClientConfig, ConfigError
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    CallableClient,
    OpenAIClient,
    build_client,
    build_clients,
    import_target,
)
from devs.risks.multi_model_failover.core.scrub import scrub

pytestmark = pytest.mark.anyio

ENV = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}


def shout(prompt: str) -> str:
    """A sync function used as a ``callable`` client."""
    return prompt.upper()


async def whisper(prompt: str) -> str:
    """An async function used as a ``callable`` client."""
    return prompt.lower()


def entry(**fields: Any) -> ClientConfig:
    return ClientConfig(**fields)


async def test_each_kind_builds_its_client_with_the_provider_default_url() -> None:
    clients = build_clients(
        [
            entry(id="gpt", kind="openai", model="gpt-4o-mini", api_key_env="OPENAI_API_KEY"),
            entry(
                id="claude",
                kind="anthropic",
                model="claude-haiku-4-5",
                api_key_env="ANTHROPIC_API_KEY",
            ),
            entry(id="local", kind="callable", target=f"{__name__}:shout"),
        ],
        env=ENV,
    )
    gpt, claude, local = clients.values()
    try:
        assert list(clients) == ["gpt", "claude", "local"]
        assert isinstance(gpt, OpenAIClient)
        assert (gpt.model_id, gpt.base_url) == ("gpt", "https://api.openai.com/v1")
        assert isinstance(claude, AnthropicClient)
        assert claude.base_url == "https://api.anthropic.com"
        assert isinstance(local, CallableClient)
        assert await local.call("hi") == "HI"
        assert await local.health_check() is True
        assert repr(local) == "CallableClient(model_id='local', fn=shout)"
        for client in (gpt, claude):
            assert OPENAI_KEY not in repr(client)
            assert ANTHROPIC_KEY not in repr(client)
    finally:
        await gpt.aclose()
        await claude.aclose()
    assert gpt.closed


async def test_an_async_function_is_awaited() -> None:
    client = build_client(entry(id="w", kind="callable", target=f"{__name__}:whisper"))
    assert await client.call("HI") == "hi"


def test_a_missing_key_variable_names_the_variable_and_the_client() -> None:
    configs = [
        entry(id="gpt", kind="openai", model="m", api_key_env="OPENAI_API_KEY"),
        entry(id="claude", kind="anthropic", model="m", api_key_env="CLAUDE_KEY"),
    ]
    with pytest.raises(ConfigError, match=r"client 'claude': environment variable CLAUDE_KEY"):
        build_clients(configs, env=ENV)


@pytest.mark.parametrize("url", ["api.openai.com/v1", "ftp://example.com", "localhost:8000"])
def test_a_base_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"client 'x': base_url must start with http"):
        build_client(entry(id="x", kind="openai", model="m", base_url=url))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "must look like"),
        ("no_such_module_xyz:fn", "cannot import"),
        (f"{__name__}:missing", "cannot import"),
        (f"{__name__}:ENV", "is not callable"),
    ],
)
def test_a_callable_target_that_cannot_work_is_refused(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        import_target(target, client_id="x")


async def test_secret_looking_header_values_are_scrubbed_everywhere() -> None:
    tenant_header = "tenant-7d1c94b2e8a5f3"
    client = OpenAIClient(
        model="m",
        base_url="http://127.0.0.1:9/v1?key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
        headers={"X-Tenant-Token": tenant_header, "X-Title": "visible-title"},
    )
    try:
        assert scrub(f"rejected {tenant_header}") == "rejected [redacted]"
        assert scrub("visible-title") == "visible-title"
        assert "AIza" not in repr(client)
    finally:
        await client.aclose()
