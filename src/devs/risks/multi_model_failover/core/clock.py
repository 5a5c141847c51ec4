"""Time, injected: the clock every deadline is read on, and the sleep every wait runs on.

``LoopTime`` is real time: a monotonic clock, ``anyio.sleep``, and timeouts on the event loop's
own timer (which runs at the same speed). ``VirtualClock`` is the test mode: time moves only
when every task is waiting, straight to the next deadline, so an incident of ten minutes, with
its backoffs, probes and timeouts, runs in milliseconds (as trio's ``MockClock`` with
``autojump_threshold=0`` does, on asyncio and trio alike)::

    clock = VirtualClock()
    async with clock.autojump(), MultiModelFailover(clients, clock=clock) as fo:
        await fo.call("hi")
        await clock.sleep(600)      # ten minutes of probe rounds, at once

A task waiting on a thread (a sync client, the event log's writer) looks idle too: autojump
waits ``threshold`` seconds of real time (2 ms by default) with every task idle before it
jumps, which is enough for the log's own thread hops; a sync client slower than that may see
virtual time jump while it runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import anyio
import anyio.lowlevel

from .cancellation import on_asyncio

EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)


class VirtualClock:
    """Virtual time: read it by calling it, wait on it with ``sleep``; see the module doc.

    ``advance(seconds)`` moves it by hand; ``autojump()`` moves it whenever every task waits.
    ``utc()`` is the wall-clock time on it (``EPOCH`` plus the virtual seconds).
    """

    def __init__(self, start: float = 0.0, *, threshold: float = 0.002) -> None:
        self._now = float(start)
        self.threshold = threshold
        self._order = itertools.count()
        # [when, order, callback]; a cancelled entry's callback is None (removed lazily).
        self._timers: list[list[object]] = []
        self._scheduled: anyio.Event | None = None  # made on the loop, by autojump()
        self._changes = 0  # timers set so far: a task that ran while we looked away set one

    def __call__(self) -> float:
        return self._now

    def utc(self) -> datetime:
        """The wall-clock time at this virtual moment."""
        return EPOCH + timedelta(seconds=self._now)

    def _schedule(self, when: float, callback: Callable[[], object]) -> list[object]:
        self._changes += 1
        entry: list[object] = [when, next(self._order), callback]
        heapq.heappush(self._timers, entry)
        if self._scheduled is not None:
            self._scheduled.set()
        return entry

    def _next_due(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2] is None:
            heapq.heappop(timers)
        return float(timers[0][0]) if timers else None  # type: ignore[arg-type]

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer due on the way, in order."""
        if seconds < 0:
            raise ValueError(f"time cannot go back: advance({seconds!r})")
        target = self._now + seconds
        while (due := self._next_due()) is not None and due <= target:
            when, _, callback = heapq.heappop(self._timers)
            self._now = max(self._now, float(when))  # type: ignore[arg-type]
            callback()  # type: ignore[operator]
        self._now = target

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has moved ``seconds`` on (at least one checkpoint)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        entry = self._schedule(self._now + seconds, woken.set)
        try:
            await woken.wait()
        finally:
            entry[2] = None

    @contextmanager
    def move_on_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        """A cancel scope that this clock cancels ``seconds`` from now."""
        with anyio.CancelScope() as scope:
            if math.isinf(seconds):
                yield scope
                return
            entry = self._schedule(self._now + seconds, scope.cancel)
            try:
                yield scope
            finally:
                entry[2] = None

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[VirtualClock]:
        """While open, jump to the next deadline whenever every other task is waiting."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._jump)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()

    async def _jump(self) -> None:
        self._scheduled = anyio.Event()
        while True:
            await self._all_idle()
            due = self._next_due()
            if due is None:
                await self._scheduled.wait()
                self._scheduled = anyio.Event()
                continue
            self.advance(max(0.0, due - self._now))

    async def _all_idle(self) -> None:
        """Return once every other task has waited ``threshold`` real seconds in a row."""
        while True:
            await _all_tasks_waiting()
            before = self._changes
            await anyio.sleep(self.threshold)  # real time: what a thread hop needs
            await _all_tasks_waiting()
            if self._changes == before:
                return


async def _all_tasks_waiting() -> None:
    """Return once every other task of the loop waits on something."""
    if not on_asyncio():
        await anyio.wait_all_tasks_blocked()  # exact on trio
        return
    # anyio's version for asyncio naps 0.1 s whenever a task is busy: far too slow here.
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        if all(t is this or _waiting(t) for t in asyncio.all_tasks()):
            return


def _waiting(task: asyncio.Task[Any]) -> bool:
    waiter = task._fut_waiter  # type: ignore[attr-defined]  # as anyio's own check reads it
    return waiter is not None and not waiter.done()


class LoopTime:
    """Real time: ``clock`` (default ``time.monotonic``) for readings, ``sleep`` for waits,
    and the event loop's own timer for timeouts."""

    @staticmethod
    def move_on_after(seconds: float) -> anyio.CancelScope:
        """A cancel scope that the event loop cancels ``seconds`` from now."""
        return anyio.move_on_after(seconds)
