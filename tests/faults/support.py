"""What the fault tests share: clients of the faulty provider, an engine over them, readers
of the event log and of the provider's record."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from datetime import datetime
from typing import Any, Final

from devs.risks.multi_model_failover import MultiModelFailover
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    HTTPModelClient,
    OpenAIClient,
)

from .provider import FaultyProvider, Model, Seen

PROMPT: Final = "Name three reasons a request fails over."
WIRES: Final = ("openai", "anthropic")
OTHER: Final = {"openai": "anthropic", "anthropic": "openai"}  # the fallback's wire, mostly
# The clients' own timeout (a client setting, not an engine policy): a silence is noticed
# after this long.
CLIENT_TIMEOUT: Final = 1.0
# Keys of a realistic shape; none is real.
KEYS: Final = {
    "openai": "sk-proj-faultlab0000000000000000000000000000000000",
    "anthropic": "sk-ant-api03-faultlab000000000000000000000000000000000000-AAAA",
}


def client(
    provider: FaultyProvider,
    model: Model,
    wire: str,
    *,
    timeout: float = CLIENT_TIMEOUT,
    **options: Any,
) -> HTTPModelClient:
    """A client of ``model`` on ``provider``, speaking ``wire`` ("openai" or "anthropic")."""
    if wire == "openai":
        return OpenAIClient(
            model=model.name,
            base_url=f"{provider.url}/{model.name}/v1",
            api_key=KEYS[wire],
            model_id=model.name,
            timeout=timeout,
            **options,
        )
    return AnthropicClient(
        model=model.name,
        base_url=f"{provider.url}/{model.name}",
        api_key=KEYS[wire],
        model_id=model.name,
        timeout=timeout,
        **options,
    )


@asynccontextmanager
async def failover(
    provider: FaultyProvider,
    *models: tuple[Model, str],
    retry_policy: Mapping[str, Any] | None = None,
    running: bool = False,
    timeout: float = CLIENT_TIMEOUT,
    **engine_options: Any,
) -> AsyncIterator[MultiModelFailover]:
    """An engine with its default policies (``retry_policy``: the opt-ins a test names) over
    ``models`` in order, each ``(model, wire)``. ``running``: inside ``async with`` (the
    probe loop runs); otherwise no probe runs unless the engine starts one itself."""
    clients = [client(provider, model, wire, timeout=timeout) for model, wire in models]
    fo = MultiModelFailover(clients, retry_policy, **engine_options)
    try:
        if running:
            async with fo:
                yield fo
        else:
            yield fo
    finally:
        await fo.aclose()
        for each in clients:
            await each.aclose()


def events_of(fo: MultiModelFailover, type_: str) -> list[Any]:
    """The stored events of one type, oldest first."""
    return [event for event in fo.event_store.read() if event.type == type_]


async def drain(stream: Any, into: list[Any] | None = None) -> list[Any]:
    """Everything a stream yields (text and any in-band notices), appended to ``into`` as it
    comes (the part received is there when the stream raises); closes the stream after."""
    items: list[Any] = [] if into is None else into
    async with aclosing(stream) as opened:
        async for item in opened:
            items.append(item)
    return items


def gaps(seen: Iterable[Seen]) -> list[float]:
    """Seconds between consecutive requests."""
    times = [s.at for s in seen]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


class Clocks:
    """Maps the events' UTC stamps onto ``time.monotonic()``, the provider's clock."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def monotonic(self, at: datetime) -> float:
        return at.timestamp() - self._offset
