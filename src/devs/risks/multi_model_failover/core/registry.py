"""The client registry: the configured clients, their ids, their calling conventions, the order.

Order of a call: configured order, skipping unhealthy and maintenance clients; when that leaves
none, every client not in maintenance, as a last resort.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from .health import HealthState

# Sync clients' threads come from a limiter of their own (one per event loop), never from the
# default one that the engine's own thread hops use (the log's commits, its load, closing): on
# trio an abandoned thread keeps its token until it returns, so clients stuck for good would
# otherwise leave the engine no thread at all. As many as anyio's default (40).
_CLIENT_THREADS: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "failover_client_threads"
)
CLIENT_THREADS = 40


def client_threads() -> anyio.CapacityLimiter:
    """The limiter of sync clients' calls and probes on this event loop."""
    try:
        return _CLIENT_THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(CLIENT_THREADS)
        _CLIENT_THREADS.set(limiter)
        return limiter


class RegisteredClient:
    """A configured client with its calling convention worked out once."""

    __slots__ = (
        "call_is_async",
        "call_takes_params",
        "client",
        "model_id",
        "probe_is_async",
        "probe_stuck",
        "stream_takes_params",
    )

    def __init__(self, model_id: str, client: Any) -> None:
        for method in ("call", "health_check"):
            if not callable(getattr(client, method, None)):
                raise TypeError(f"client {model_id!r} has no callable {method}() method")
        self.model_id = model_id
        self.client = client
        self.call_is_async = inspect.iscoroutinefunction(client.call)
        self.probe_is_async = inspect.iscoroutinefunction(client.health_check)
        # Per-call params go only to a method that says it takes them (``params=``).
        self.call_takes_params = takes_params(client.call)
        stream = getattr(client, "stream", None)
        self.stream_takes_params = callable(stream) and takes_params(stream)
        # A sync probe's thread cannot be stopped: this stays True until it really returns.
        self.probe_stuck = False

    async def call(self, prompt: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The client's answer (given ``params`` when there are any); a sync client runs on a
        worker thread."""
        answer = self.client.call if params is None else partial(self.client.call, params=params)
        if self.call_is_async:
            return await answer(prompt)
        # A sync client must never block the event loop; an abandoned thread is the price of
        # being able to time out a call that blocks forever.
        result = await anyio.to_thread.run_sync(
            answer, prompt, abandon_on_cancel=True, limiter=client_threads()
        )
        return await result if inspect.isawaitable(result) else result

    async def health_check(self) -> object:
        """What the client's ``health_check()`` returned (only ``True`` means healthy)."""
        if self.probe_is_async:
            return await self.client.health_check()
        result = await anyio.to_thread.run_sync(
            self._sync_probe, abandon_on_cancel=True, limiter=client_threads()
        )
        return await result if inspect.isawaitable(result) else result

    def _sync_probe(self) -> object:
        self.probe_stuck = True
        try:
            return self.client.health_check()
        finally:
            self.probe_stuck = False


def takes_params(method: Any) -> bool:
    """Whether ``method`` accepts a ``params`` keyword (by name, or ``**kwargs``)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it does not
        return False
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == "params" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


def _pairs(clients: Sequence[Any] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Model ids: mapping keys, else a ``model_id`` str attribute, else ``client-N``."""
    if isinstance(clients, Mapping):
        return [(str(key), client) for key, client in clients.items()]
    if isinstance(clients, Sequence) and not isinstance(clients, str | bytes):
        pairs = []
        for index, client in enumerate(clients):
            model_id = getattr(client, "model_id", None)
            pairs.append((model_id if isinstance(model_id, str) else f"client-{index}", client))
        return pairs
    raise TypeError(f"clients must be a sequence or a mapping, got {type(clients).__name__}")


class ClientRegistry:
    """The configured clients in configured order, by id."""

    def __init__(self, clients: Sequence[Any] | Mapping[str, Any]) -> None:
        pairs = _pairs(clients)
        if not pairs:
            raise ValueError("clients must not be empty: give at least one model client")
        self.by_id: dict[str, RegisteredClient] = {}
        for model_id, client in pairs:
            if not model_id:
                raise ValueError("a client's model id must not be empty")
            if model_id in self.by_id:
                raise ValueError(f"duplicate model id {model_id!r}: each client needs its own id")
            self.by_id[model_id] = RegisteredClient(model_id, client)
        self.ids: tuple[str, ...] = tuple(self.by_id)

    def __getitem__(self, model_id: str) -> RegisteredClient:
        return self.by_id[model_id]

    def check_known(self, model_id: str) -> None:
        """``ValueError`` naming the known ids unless ``model_id`` is one of them."""
        if model_id not in self.by_id:
            raise ValueError(f"unknown model id {model_id!r} (known: {', '.join(self.ids)})")

    def plan(self, state_of: Mapping[str, HealthState]) -> tuple[tuple[str, ...], bool]:
        """The order of the next call given each client's state, and whether it is the last
        resort (no client in rotation: every client not in maintenance)."""
        order = tuple(mid for mid in self.ids if state_of[mid].in_rotation)
        if order:
            return order, False
        fallback = tuple(mid for mid in self.ids if state_of[mid] is not HealthState.MAINTENANCE)
        return fallback, True
