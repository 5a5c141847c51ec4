"""Real fakes for the engine tests: a scriptable model client, a sync one, a virtual clock.

No ``Mock``: each fake records what happened to it so that a test can assert the answer, the
event log and the state, and only then, where it matters, who was called.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from devs.risks.multi_model_failover import ModelError, MultiModelFailover

Handler = Callable[[str], Any]
Probe = Callable[[], Any]


def script(*outcomes: object) -> Handler:
    """A handler that plays ``outcomes`` in order, one per call, then repeats the last one.

    An exception instance is raised, anything else is returned. Give a fresh exception per
    entry where the same instance would otherwise be raised twice.
    """
    if not outcomes:
        raise ValueError("script needs at least one outcome")
    remaining = list(outcomes)

    def handler(prompt: str) -> object:
        outcome = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return handler


def always(outcome: object) -> Handler:
    """A handler that returns ``outcome`` (or raises it, when it is an exception) every time."""
    return script(outcome)


def failing(kind: str = "server", message: str = "boom", **kwargs: Any) -> Handler:
    """A handler that raises a fresh ``ModelError`` of ``kind`` on every call."""

    def handler(prompt: str) -> object:
        raise ModelError(message, kind=kind, **kwargs)

    return handler


async def hang(prompt: str = "") -> object:
    """A handler that never answers (until cancelled)."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def _resolve(value: object) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class FakeModelClient:
    """An async model client driven by ``handler(prompt)`` (sync or async).

    ``probe`` answers ``health_check()``: a bool, an exception to raise, or a callable (sync or
    async) returning either. ``calls`` holds every prompt seen, ``probes`` counts health checks.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        model_id: str | None = None,
        probe: bool | BaseException | Probe = True,
    ) -> None:
        self.handler: Handler = handler if handler is not None else always("ok")
        self.model_id = model_id
        self.probe = probe
        self.calls: list[str] = []
        self.probes = 0

    async def call(self, prompt: str) -> Any:
        """Record the prompt and answer with the handler."""
        self.calls.append(prompt)
        return await _resolve(self.handler(prompt))

    async def health_check(self) -> bool:
        """Record the probe and answer as ``probe`` says."""
        self.probes += 1
        probe = self.probe
        if isinstance(probe, BaseException):
            raise probe
        if callable(probe):
            return bool(await _resolve(probe()))
        return probe


class SyncFakeModelClient:
    """A client with plain synchronous ``call`` and ``health_check``, recording its threads."""

    def __init__(
        self, handler: Handler | None = None, *, model_id: str | None = None, healthy: bool = True
    ) -> None:
        self.handler: Handler = handler if handler is not None else always("ok")
        self.model_id = model_id
        self.healthy = healthy
        self.calls: list[str] = []
        self.call_threads: list[int] = []
        self.probe_threads: list[int] = []

    def call(self, prompt: str) -> Any:
        """Record the prompt and the thread, then answer with the handler."""
        self.calls.append(prompt)
        self.call_threads.append(threading.get_ident())
        return self.handler(prompt)

    def health_check(self) -> bool:
        """Record the thread and answer ``healthy``."""
        self.probe_threads.append(threading.get_ident())
        return self.healthy


class FakeClock:
    """Virtual monotonic time: ``clock()`` reads it, ``await clock.sleep(s)`` advances it.

    ``sleeps`` lists every requested wait; ``waits`` the same as (start, seconds) pairs.
    ``on_sleep`` (optional, async) runs at each sleep, after time moved: a hook for tests that
    act during a backoff.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.waits: list[tuple[float, float]] = []
        self.on_sleep: Callable[[float], Awaitable[None]] | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance time, let other tasks run once."""
        self.sleeps.append(seconds)
        self.waits.append((self.now, seconds))
        self.now += seconds
        if self.on_sleep is not None:
            await self.on_sleep(seconds)
        await anyio.lowlevel.checkpoint()


def ids(events: Iterable[object], event_type: str, field: str = "model_id") -> list[object]:
    """The ``field`` of every event of ``event_type``, in log order."""
    return [getattr(e, field) for e in events if getattr(e, "type", None) == event_type]


@contextlib.asynccontextmanager
async def engine(
    clients: Sequence[Any] | Mapping[str, Any],
    retry: Mapping[str, Any] | None = None,
    *,
    clock: FakeClock | None = None,
    **options: Any,
) -> AsyncIterator[MultiModelFailover]:
    """A MultiModelFailover on virtual time (``clock``), no jitter, a seeded rng; closed after.

    Unlike ``async with fo`` this starts no background health loop.
    """
    clock = clock if clock is not None else FakeClock()
    options.setdefault("sleep", clock.sleep)
    options.setdefault("clock", clock)
    options.setdefault("rng", random.Random(1234))
    fo = MultiModelFailover(clients, {"jitter": "none", **(retry or {})}, **options)
    try:
        yield fo
    finally:
        await fo.aclose()
