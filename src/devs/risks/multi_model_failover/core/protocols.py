"""The seams of the core: what a model client and an event store must offer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import anyio

from .events import Event

if TYPE_CHECKING:
    from .projections import Snapshot

Durability: TypeAlias = Literal["buffered", "process", "power"]
DURABILITIES: tuple[str, ...] = ("buffered", "process", "power")

ChatMessage: TypeAlias = Mapping[str, Any]
"""One chat message: ``{"role": "user", "content": "..."}`` (OpenAI's shape)."""
Prompt: TypeAlias = str | Sequence[ChatMessage]
"""What a call answers: a str, or chat messages in order."""
Params: TypeAlias = Mapping[str, Any]
"""One call's request options (str keys), merged over the client's configured ``params``."""

Clock: TypeAlias = Callable[[], float]
Sleep: TypeAlias = Callable[[float], Awaitable[Any]]


class Timer(Protocol):
    """Enforces timeouts on the same time as the clock reads (``clock.LoopTime``,
    ``clock.VirtualClock``)."""

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope cancelled ``seconds`` from now."""


@runtime_checkable
class ModelClient(Protocol):
    """A model the engine can call. Both methods may be sync or async.

    ``call`` raises on failure: ``ModelError`` with a kind when the client knows why,
    ``TimeoutError`` or any other ``Exception`` otherwise. A client that takes per-call
    request options declares ``call(self, prompt, params=None)`` (``params: Params | None``):
    the engine passes ``params=`` only to such a client, and only when the caller gave some.
    An optional ``stream(prompt[, params=None])`` returns an async iterator of text.
    """

    def call(self, prompt: Prompt) -> Any:
        """Answer ``prompt``; the response object is handed back to the caller unchanged."""

    def health_check(self) -> bool | Awaitable[bool]:
        """True when the model looks able to serve."""


class EventStore(Protocol):
    """An append-only, ordered event log.

    ``append`` is cheap and never blocks on I/O; ``wait_committed`` waits until an appended
    event is as durable as the store's ``durability`` promises.
    """

    durability: Durability
    writer: str

    def append(self, event: Event) -> int:
        """Queue ``event``; returns a ticket for ``wait_committed``."""

    async def wait_committed(self, ticket: int) -> None:
        """Return once the event with ``ticket`` (and all before it) is committed."""

    def read(self, *, after: int = 0) -> Iterator[Event]:
        """Stored events with ``seq > after``, oldest first (this store's appends flushed)."""

    def read_others(self, after: int) -> tuple[list[Event], int]:
        """Events other writers stored with ``seq > after``, and the new cursor."""

    def last_seq(self) -> int:
        """The highest stored ``seq`` (0 for an empty log)."""

    def close(self) -> None:
        """Flush and close (blocking)."""

    async def aclose(self) -> None:
        """Flush and close without blocking the event loop."""


class SnapshotLoader(Protocol):
    """What a store's ``snapshots`` attribute offers, when it has one
    (``storage.snapshots.Snapshots``): the fold of the log without reading all of it."""

    def load(
        self,
        upto: int | None = None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
    ) -> tuple[Snapshot, int]:
        """The fold of the log up to seq ``upto`` (default: all of it) and its cursor, from
        the latest snapshot (``from_start``: from the log's base). ``keep``: save the result
        as a snapshot when the load folded many events."""

    def loading(
        self,
        upto: int | None = None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
    ) -> LoadSteps:
        """``load`` in steps, for a caller that reads on a worker thread and folds on its
        own."""


class LoadSteps(Protocol):
    """One load in steps (``storage.snapshots.Loading``): ``begin``, ``read`` and ``finish``
    read the log (on a worker thread); ``fold`` only decodes and folds what ``read`` fetched,
    for a time budget at a time (on the caller's thread). ``finish`` gives None when the load
    must ``begin`` again (an archive cut the log meanwhile)."""

    def begin(self) -> None:
        """Find where the fold starts."""

    def read(self) -> bool:
        """Fetch the next rows to fold; False when none are left."""

    def fold(self, budget: float | None = None) -> bool:
        """Fold the rows fetched for about ``budget`` seconds; True once all are folded."""

    def finish(self) -> tuple[Snapshot, int] | None:
        """The fold and its cursor, or None: ``begin`` again."""

    def close(self) -> None:
        """The load is over, however it ended (says what it skipped)."""
