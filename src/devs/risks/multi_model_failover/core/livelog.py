"""The live log: every event appended to the store and folded into the live view, at once.

``emit`` appends the event, then applies it with the same ``projections.apply`` that ``replay``
uses, so the live view equals the replayed one. ``follow`` folds in what other writers (the
replicas of a fleet, an operator's command line) appended to a shared log.

Two views: ``snap`` is the whole log (what ``replay`` gives); ``health`` decides the rotation.
With the ``fleet`` scope they are one object; with the ``replica`` scope ``health`` holds this
engine's own events and everyone's maintenance.

Start-up reads nothing on the event loop: ``pin`` notes where the log ends before the engine
emits its first event, and ``aload`` loads the log up to there (from the store's latest
snapshot when it keeps them), then folds the events the engine emitted meanwhile on top, once
each. The store reads on a worker thread; the rows are decoded and folded on the loop, half a
millisecond at a time, other tasks running between slices. (Folded on a worker thread, they
would hold the GIL against the loop, which then waits a switch interval, 5 ms, for it, twice
in a turn.) ``load`` does it all at once, blocking, for a caller that cannot wait (a
synchronous accessor before any async use).

In a shared log the live view is the fold of the log read so far, in ``seq`` order, plus this
engine's own events not yet read back, in the order they were emitted. Another writer's events
may land before some of ours in ``seq`` order, and the fold depends on order (a transition whose
premise no longer holds has no effect). So once the log shows another writer, ``follow`` reads
everything past a checkpoint (ours included, each flagged), folds it into the checkpoint in
``seq`` order, and rebuilds the live view as that plus our events still unread. The live view
then equals ``replay`` of the log as soon as our own events are read back.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from .calls import EngineClosedError
from .events import EngineStarted, Event, Maintenance, StateChanged
from .health import HealthState
from .projections import Metrics, ModelState, Snapshot, apply
from .protocols import EventStore, SnapshotLoader

WallClock = Callable[[], datetime]

# Our events unread past this many: read the log back even if nobody else wrote (bounds memory).
_MOST_UNREAD = 10_000
# How far into our unread events a read-back event is looked for (past dropped ones).
_LOOK_AHEAD = 64
# Events folded on the event loop between two checkpoints while following (about 1 ms).
_SLICE = 2_000
# Seconds of decoding and folding on the event loop between two checkpoints while loading.
_FOLD_SLICE = 0.0005

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
        # Whether the log's history is folded in; until then the views hold only our events.
        self.loaded = False
        self._upto: int | None = None  # where the log ended at ``pin``: the load stops there
        self._loading: anyio.Event | None = None  # set once the load under way has ended
        self._closing = False  # no load may start: the store is closing (``settle``)
        self._refolding = anyio.Lock()
        # Once another writer shows up: the fold of the log up to ``_base_cursor`` in seq
        # order, and our own events emitted since the first re-fold began, not yet read back.
        # Before the load: our events emitted so far, folded again on top of the loaded log.
        self._base: tuple[Snapshot, Snapshot | None] | None = None
        self._base_cursor = 0
        self._unread: deque[Event] | None = deque()
        # The store's count of logs it found replaced under it (0 for a store that cannot tell).
        self._resets = 0
        # Called after an event that may change the rotation (the engine drops its plan).
        self.on_rotation_change: Callable[[], None] = lambda: None

    def pin(self) -> None:
        """Note where the log ends, before the engine emits anything (at start-up): the
        load folds the log up to there. An empty log is loaded at once (nothing to read)."""
        self._upto = self._end()
        if self._upto == 0:
            self.load()

    def _end(self) -> int:
        """The log's last seq, this store's own queued appends included."""
        flush = getattr(self.store, "flush", None)
        if callable(flush):
            flush()
        return self.store.last_seq()

    def load(self) -> None:
        """Fold in the log up to the pinned seq (unpinned: all of it) now, blocking."""
        if not self.loaded:
            self._install(*self._read())

    async def aload(self) -> None:
        """Fold in the log up to the pinned seq (read on a worker thread, folded here in
        slices: the event loop runs on meanwhile), then our events emitted since. Tasks that
        ask while a load is under way wait for it. Raises what reading the log raises
        (``EventLogError``); cancelled, it leaves nothing half loaded (the next use loads)."""
        while not self.loaded:
            loading = self._loading
            if loading is not None:
                await loading.wait()
                continue  # loaded, or failed: then this task tries (and raises) itself
            if self._closing:  # the store is about to close: nothing may read it now
                raise EngineClosedError("this MultiModelFailover is closed")
            self._loading = done = anyio.Event()
            try:
                self._install(*await self._aread())
            finally:
                self._loading = None
                done.set()

    async def settle(self) -> None:
        """The store is about to close: no load starts from now on (``aload`` raises
        ``EngineClosedError``), and the one under way, if any, ends first."""
        self._closing = True
        loading = self._loading
        if loading is not None:
            await loading.wait()

    async def _aread(self) -> tuple[Snapshot, int]:
        """``_read`` without holding up the event loop: the store's reads on a worker thread,
        the decoding and folding here, ``_FOLD_SLICE`` at a time (see ``LoadSteps``)."""
        loader = getattr(self.store, "snapshots", None)
        if not callable(getattr(loader, "loading", None)):
            return await anyio.to_thread.run_sync(self._read)
        upto = self._upto
        if upto is None:
            upto = await anyio.to_thread.run_sync(self._end)
        steps = cast(SnapshotLoader, loader).loading(upto, keep=True)
        try:
            while True:
                await anyio.to_thread.run_sync(steps.begin)
                while await anyio.to_thread.run_sync(steps.read):
                    while not steps.fold(_FOLD_SLICE):
                        await anyio.lowlevel.checkpoint()
                done = await anyio.to_thread.run_sync(steps.finish)
                if done is not None:
                    snap, cursor = done
                    # Past ``upto`` only when an archive moved every event out: the cut is
                    # the end.
                    return snap, max(cursor, upto)
        finally:
            steps.close()

    def _read(self) -> tuple[Snapshot, int]:
        """The fold of the log up to the pinned seq, and its cursor (on any thread)."""
        upto = self._end() if self._upto is None else self._upto
        loader = getattr(self.store, "snapshots", None)
        if callable(getattr(loader, "load", None)):
            snap, cursor = cast(SnapshotLoader, loader).load(upto, keep=True)
            # Past ``upto`` only when an archive moved every event out: the cut is the end.
            return snap, max(cursor, upto)
        snap = Snapshot()
        for event in self.store.read():
            if event.seq > upto:
                break
            apply(snap, event)
        return snap, upto

    def _install(self, snap: Snapshot, cursor: int) -> None:
        """Make ``snap`` (the log up to ``cursor``) the live view, with the events emitted
        since the pin folded on top of it. On the event loop's thread, like ``emit``."""
        if self.loaded:  # a synchronous load got there first
            return
        shared = self.health is self.snap
        early = self._unread or ()
        self._resets = getattr(self.store, "resets", 0)
        self.cursor = self._base_cursor = cursor
        self.snap = snap
        self.health = snap if shared else _maintenance_view(snap)
        self._base = (_copy(self.snap), None if shared else _copy(self.health))
        self._unread = None
        self.loaded = True
        for event in early:
            apply(self.snap, event)
            if not shared:
                apply(self.health, event)
        self.on_rotation_change()

    def emit(self, event: Event) -> None:
        """Append ``event`` to the store and fold it into the live views."""
        self.ticket = self.store.append(event)
        apply(self.snap, event)
        if self.health is not self.snap:
            apply(self.health, event)
        if self._unread is not None:
            self._unread.append(event)
        if type(event) in _CHANGES_ROTATION:
            self.on_rotation_change()

    async def commit(self) -> None:
        """Wait until everything emitted so far is as durable as the store promises.

        A checkpoint like any other: the caller's cancellation interrupts it (see
        ``CallLedger.superseded`` for what the log then says).
        """
        await self.store.wait_committed(self.ticket)

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
        await self.aload()
        events, cursor = await anyio.to_thread.run_sync(self.store.read_others, self.cursor)
        self._start_over_if_replaced()
        read_since = getattr(self.store, "read_since", None)
        busy = self._unread is not None and len(self._unread) > _MOST_UNREAD
        if (not events and not busy) or not callable(read_since):
            folded = self.fold_others(events)  # nothing to reorder, or a store that cannot
            self.cursor = max(self.cursor, cursor)
            return folded
        return await self._refold(read_since)

    def _start_over_if_replaced(self) -> None:
        """Another log replaced ours, and the store read it from its start: its seqs begin
        again at 1, so our cursors do too. What the view already holds stays (the old log's
        events are history; the new one's are folded on top)."""
        resets = getattr(self.store, "resets", 0)
        if resets != self._resets:
            self._resets = resets
            self.cursor = 0
            self._base_cursor = 0

    async def _refold(
        self, read_since: Callable[[int], tuple[list[tuple[Event, bool]], int]]
    ) -> int:
        """Fold the log past the checkpoint in seq order; rebuild the live views from it."""
        if self._unread is None:
            self._unread = deque()  # ours from now on; older ones are in the read below
        async with self._refolding:  # one re-fold at a time: each yields between slices
            return await self._refold_now(read_since)

    async def _refold_now(
        self, read_since: Callable[[int], tuple[list[tuple[Event, bool]], int]]
    ) -> int:
        rows, cursor = await anyio.to_thread.run_sync(read_since, self._base_cursor)
        self._start_over_if_replaced()  # the rows may be the new log's, from its start
        assert self._base is not None  # noqa: S101 - set by load()
        whole, local = self._base
        others = 0
        for index, (event, mine) in enumerate(rows, 1):
            if index % _SLICE == 0:  # a busy fleet's backlog never holds the loop for long
                await anyio.lowlevel.checkpoint()
            if event.seq <= self._base_cursor:  # a concurrent follow folded it already
                continue
            self._base_cursor = event.seq
            if mine:
                self._read_back(event)
            elif event.seq > self.cursor:
                others += 1
            apply(whole, event)
            if local is not None and (mine or type(event) is Maintenance):
                apply(local, event)  # replica scope: our events and everyone's maintenance
        self._base_cursor = max(self._base_cursor, cursor)
        self.cursor = max(self.cursor, self._base_cursor)
        self.snap = _copy(whole)
        self.health = self.snap if local is None else _copy(local)
        for event in self._unread or ():
            apply(self.snap, event)
            if self.health is not self.snap:
                apply(self.health, event)
        self.on_rotation_change()
        return others

    def _read_back(self, event: Event) -> None:
        """One of our events came back from the log: it is no longer unread."""
        unread = self._unread
        assert unread is not None  # noqa: S101 - set by _refold
        mine = msgspec.structs.replace(event, seq=0)
        for index, candidate in enumerate(itertools.islice(unread, _LOOK_AHEAD)):
            if candidate == mine:
                for _ in range(index + 1):  # any before it never reached the log (dropped)
                    unread.popleft()
                return

    def metrics(self) -> Metrics:
        """A copy of the live metrics (the log loaded first, if it is not yet)."""
        self.load()
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self.snap.metrics), type=Metrics)

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection (the log loaded first, if it is not yet)."""
        self.load()
        return _copy(self.snap)

    def status(self) -> dict[str, Any]:
        """The event log's own health: write errors, dropped events, the last error."""
        store = self.store
        return {
            "errors": getattr(store, "errors", 0),
            "dropped": getattr(store, "dropped", 0),
            "last_error": getattr(store, "last_error", None),
        }


def _maintenance_view(whole: Snapshot) -> Snapshot:
    """The replica scope's health view of a loaded log: the log's maintenance. Only
    maintenance events enter or leave maintenance, so a model is in maintenance in the whole
    fold exactly when it is in the fold of the maintenance events alone."""
    view = Snapshot(models=whole.models)
    for model_id, state in whole.states.items():
        if state.state is HealthState.MAINTENANCE:
            view.states[model_id] = ModelState(
                state=state.state,
                since=state.since,
                reason=state.reason,
                cause=state.cause,
                by=state.by,
            )
    return view


def _copy(snap: Snapshot) -> Snapshot:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot)
