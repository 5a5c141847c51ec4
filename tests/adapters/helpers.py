"""What the adapter tests share: the two wire protocols, realistic keys, a fake sleep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from fake_provider import (
    FakeProvider,
    anthropic_error,
    anthropic_events,
    anthropic_message,
    openai_completion,
    openai_error,
    openai_events,
)

from devs.risks.multi_model_failover import MultiModelFailover
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    HTTPModelClient,
    OpenAIClient,
)

# Realistic shapes (and lengths) of provider keys; none is a real key.
OPENAI_KEY = "sk-proj-Xq7vB2nLm9TzR4kWp8sYd3fHj6gAc1eU0oIiQw5rEt-" + "ZyXwVuTsRqPoNmLk" * 5
ANTHROPIC_KEY = "sk-ant-api03-" + "Qw3rTy8uIo1pAs6dFg4hJk9lZx2cVb7nM5" * 3 + "-AbCdEfAA"
LOCAL_KEY = "llama-local-7f3e9a1c5b2d8e4f6a0b"  # no known shape: only registration scrubs it

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def fixed_now() -> datetime:
    return NOW


@dataclass(frozen=True)
class Wire:
    """One wire protocol: its paths, its answers and its errors, and a client speaking it."""

    name: str
    chat: str
    models: str
    ok: Callable[..., dict[str, Any]]
    error: Callable[[str, str], Any]  # (error type, message)
    events: Callable[..., tuple[str, ...]]
    client_class: type[HTTPModelClient]
    prefix: str

    def client(
        self, provider: FakeProvider, *, model_id: str, api_key: str | None = None, **options: Any
    ) -> HTTPModelClient:
        options.setdefault("timeout", 5.0)
        return self.client_class(
            model=f"{self.name}-model",
            base_url=provider.url + self.prefix,
            api_key=api_key,
            model_id=model_id,
            wall_clock=fixed_now,
            **options,
        )


OPENAI = Wire(
    name="openai",
    chat="/v1/chat/completions",
    models="/v1/models",
    ok=openai_completion,
    error=lambda type_, message: openai_error(message, type_=type_),
    events=openai_events,
    client_class=OpenAIClient,
    prefix="/v1",
)
ANTHROPIC = Wire(
    name="anthropic",
    chat="/v1/messages",
    models="/v1/models",
    ok=anthropic_message,
    error=anthropic_error,
    events=anthropic_events,
    client_class=AnthropicClient,
    prefix="",
)
WIRES = (OPENAI, ANTHROPIC)


class FakeSleep:
    """An async sleep that returns at once and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


def event_types(fo: MultiModelFailover) -> list[str]:
    return [event.type for event in fo.event_store.read()]


def events_of(fo: MultiModelFailover, type_: str) -> list[Any]:
    return [event for event in fo.event_store.read() if event.type == type_]


def log_text(fo: MultiModelFailover) -> str:
    """Every stored event as JSON, one per line."""
    return "\n".join(msgspec.json.encode(e).decode() for e in fo.event_store.read())
