"""The live log: every event appended to the store and folded into the live view, at once.

``emit`` appends the event, then applies it with the same ``projections.apply`` that ``replay``
uses, so the live view equals the replayed one. ``follow`` folds in what other writers (the
replicas of a fleet, an operator's command line) appended to a shared log.

Two views: ``snap`` is the whole log (what ``replay`` gives); ``health`` decides the rotation.
With the ``fleet`` scope they are one object; with the ``replica`` scope ``health`` holds this
engine's own events and everyone's maintenance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from .cancellation import on_asyncio
from .events import EngineStarted, Event, Maintenance, StateChanged
from .projections import Metrics, Snapshot, apply
from .protocols import EventStore

WallClock = Callable[[], datetime]

# The events after which the rotation must be worked out again.
_CHANGES_ROTATION: frozenset[type[Event]] = frozenset({StateChanged, Maintenance, EngineStarted})


class LiveLog:
    """Appends events, folds them live, follows other writers; see the module docstring."""

    def __init__(self, store: EventStore, *, shared_health: bool) -> None:
        self.store = store
        self.snap = Snapshot()
        self.health = self.snap if shared_health else Snapshot()
        self.cursor = 0
        self.ticket = 0
        # Called after an event that may change the rotation (the engine drops its plan).
        self.on_rotation_change: Callable[[], None] = lambda: None

    def load(self) -> None:
        """Fold in everything the store already holds (at start-up)."""
        self.fold_others(self.store.read())

    def emit(self, event: Event) -> None:
        """Append ``event`` to the store and fold it into the live views."""
        self.ticket = self.store.append(event)
        apply(self.snap, event)
        if self.health is not self.snap:
            apply(self.health, event)
        if type(event) in _CHANGES_ROTATION:
            self.on_rotation_change()

    async def commit(self) -> None:
        """Wait until everything emitted so far is as durable as the store promises.

        The caller's outcome is already recorded when this runs, so the wait is shielded from
        the caller's cancellation: the caller gets the outcome the log holds. A cancel scope
        (anyio, trio) still takes effect at the caller's next checkpoint; a plain asyncio
        ``Task.cancel()`` arriving here is too late, as if the call had returned just before it.
        """
        if self.store.durability == "buffered":
            return
        wait = self.store.wait_committed(self.ticket)
        if on_asyncio():
            await _shielded_on_asyncio(wait)
            return
        with anyio.CancelScope(shield=True):
            await wait

    def fold_others(self, events: Iterable[Event]) -> int:
        """Fold in events other writers stored, once each; returns how many."""
        folded = 0
        local = self.health if self.health is not self.snap else None
        rotation = False
        for event in events:
            if event.seq <= self.cursor:  # a concurrent follow() already folded it
                continue
            self.cursor = event.seq
            apply(self.snap, event)
            if local is not None and type(event) is Maintenance:
                apply(local, event)  # operator actions are fleet-wide in every scope
            rotation = rotation or type(event) in _CHANGES_ROTATION
            folded += 1
        if rotation:
            self.on_rotation_change()
        return folded

    async def follow(self) -> int:
        """Fold in what other writers appended since the last follow; returns how many."""
        events, cursor = await anyio.to_thread.run_sync(self.store.read_others, self.cursor)
        folded = self.fold_others(events)
        self.cursor = max(self.cursor, cursor)
        return folded

    def metrics(self) -> Metrics:
        """A copy of the live metrics."""
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self.snap.metrics), type=Metrics)

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection."""
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self.snap), type=Snapshot)

    def status(self) -> dict[str, Any]:
        """The event log's own health: write errors, dropped events, the last error."""
        store = self.store
        return {
            "errors": getattr(store, "errors", 0),
            "dropped": getattr(store, "dropped", 0),
            "last_error": getattr(store, "last_error", None),
        }


async def _shielded_on_asyncio(wait: Coroutine[Any, Any, None]) -> None:
    """Await ``wait`` to its end whatever cancellations arrive meanwhile.

    anyio's shield keeps its own cancel scopes out (they take effect at the caller's next
    checkpoint); a plain ``Task.cancel()`` is caught and taken back (``uncancel``), so the
    task's cancellation count stays true.
    """
    task = asyncio.ensure_future(wait)
    current = asyncio.current_task()
    with anyio.CancelScope(shield=True):
        while True:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if current is not None:
                    current.uncancel()
                continue
            return
