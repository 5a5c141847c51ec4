"""Virtual time for a closed world: the clock, sleep and timeouts a what-if runs the engine on.

``VirtualClock`` (``core.clock``) jumps when every task of the event loop has waited a couple
of real milliseconds, because it cannot know what a thread or a socket is about to do. A
what-if is a closed world: every task in it is one of ours (a recorded call, a probe, an
operator's action), and every wait is a wait on this clock. So the clock knows exactly when
nothing can run any more: it counts the tasks that are running, and when the count drops to
zero it moves time straight to the next happening and wakes whoever waits for it. No real time
passes at all, which is what lets a day of a busy service replay in seconds.

Order at one instant. Happenings due at the same virtual instant are taken one at a time, in
order of ``(when, prio)``, each run until every task waits again. The replay gives a recorded
happening the ``seq`` of the event that shows it as its ``prio``, so two things the log shows
at the same microsecond happen again in the log's order (a wait of the engine's own, a backoff
or a timeout, gets the ``prio`` of the event that ends it in the log when the replay knows it,
else comes after them: ``prio`` infinite).

Timeouts do not need a timer each: a task's open scopes are looked at when it goes to sleep,
and it is woken at the earlier of its sleep's end and its nearest scope deadline.

Tasks waiting on anything else (a thread, a lock) count as running: the clock waits for them.
A task in this world must therefore never wait for another one to move time (nothing here
does: calls, probes and operator actions only ever wait on this clock).

On asyncio the waits are plain futures and a scope cancels its task directly (as
``asyncio.timeout`` does); on any other backend (trio) anyio's events and cancel scopes do the
same, more slowly.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ..cancellation import on_asyncio

INF = math.inf
# A sleep that only a scope ends (a model that never answers).
FOREVER = 1e18


class Fiber:
    """One task of the closed world: where it sleeps, its open scopes, what it is doing."""

    __slots__ = ("data", "end", "end_prio", "parked", "scopes", "task", "waiter")

    def __init__(self, task: asyncio.Task[Any] | None, data: object) -> None:
        self.task = task
        self.data = data
        self.parked: list[Any] | None = None  # the heap entry of the sleep it waits in
        self.scopes: list[Scope] = []
        self.waiter: Any = None
        self.end = 0.0  # when its current sleep ends
        self.end_prio = INF


_FIBER: contextvars.ContextVar[Fiber] = contextvars.ContextVar("whatif_fiber")


def current_fiber() -> Fiber:
    """The fiber of the running task (``LookupError`` outside the closed world)."""
    return _FIBER.get()


class Scope:
    """A cancel scope of the closed world: cancelled at ``deadline`` (or by ``cancel_now``).

    Used as the engine's ``move_on_after`` and for a recorded caller's cancellation.
    ``cancelled_caught`` as anyio's.
    """

    __slots__ = (
        "_level",
        "_native",
        "_sim",
        "cancelled_caught",
        "deadline",
        "fiber",
        "fired",
        "prio",
    )

    def __init__(self, sim: SimClock, fiber: Fiber, deadline: float, prio: float) -> None:
        self._sim = sim
        self.fiber = fiber
        self.deadline = deadline
        self.prio = prio
        self.fired = False
        self.cancelled_caught = False
        self._level = 0
        self._native: anyio.CancelScope | None = None

    def __enter__(self) -> Scope:
        if self.fiber.task is None:
            self._native = anyio.CancelScope().__enter__()
        self.fiber.scopes.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.fiber.scopes.remove(self)
        if self._native is not None:
            swallowed = bool(self._native.__exit__(exc_type, exc, tb))
            self.cancelled_caught = self._native.cancelled_caught
            return swallowed
        task = self.fiber.task
        if (
            self.fired
            and exc_type is asyncio.CancelledError
            and task is not None
            and task.uncancel() <= self._level
        ):
            self.cancelled_caught = True
            return True
        return False

    def cancel(self) -> None:
        """Cancel the scope now (the engine closing cuts an attempt's wait short)."""
        self.cancel_now()
        self._sim.woken(self.fiber)

    def cancel_now(self) -> None:
        """Cancel the scope; its task gets the cancellation at its next checkpoint."""
        if self.fired:
            return
        self.fired = True
        if self._native is not None:
            self._native.cancel()
            return
        task = self.fiber.task
        if task is not None:
            self._level = task.cancelling()
            task.cancel()


class SimClock:
    """Virtual seconds since ``origin``; see the module docstring.

    The engine takes it as its ``clock`` and ``timer``, its ``sleep`` as its sleep, and
    ``utc`` as its wall clock.
    """

    def __init__(self, origin: datetime) -> None:
        self.origin = origin
        self.now = 0.0
        self._utc_at = 0.0
        self._utc = origin
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._running = 0
        self._asyncio = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._done: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        self._over = False  # finished, or failed: nothing more is taken from the heap

    # -- reading it ----------------------------------------------------------------------

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        """The wall-clock time at this virtual instant."""
        if self._utc_at != self.now:
            self._utc = self.origin + timedelta(seconds=self.now)
            self._utc_at = self.now
        return self._utc

    # -- happenings ----------------------------------------------------------------------

    def at(self, when: float, prio: float, callback: Callable[[], object]) -> list[Any]:
        """Call ``callback`` (synchronously, from the clock) at ``when``; returns the entry."""
        entry = [when, prio, next(self._order), callback]
        heapq.heappush(self._heap, entry)
        return entry

    def spawn(
        self, body: Callable[..., Awaitable[object]], *args: Any, data: object = None
    ) -> None:
        """Start ``body(*args)`` as a task of the closed world with ``data`` on its fiber."""
        if self._over:
            return
        self._running += 1
        if self._asyncio:
            assert self._loop is not None  # noqa: S101 - set by run()
            task = self._loop.create_task(self._fiber_body(body, args, data))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            assert self._group is not None  # noqa: S101 - set by run()
            self._group.start_soon(self._fiber_body, body, args, data)

    async def _fiber_body(
        self, body: Callable[..., Awaitable[object]], args: tuple[Any, ...], data: object
    ) -> None:
        task = asyncio.current_task() if self._asyncio else None
        fiber = Fiber(task, data)
        token = _FIBER.set(fiber)
        try:
            await body(*args)
        except BaseException:
            self._over = True  # a task of the world failed (or the world is torn down)
            raise
        finally:
            # The task's context holds the fiber, which holds the task: undo that cycle, or
            # each task of the world stays garbage until a collection finds it.
            _FIBER.reset(token)
            fiber.task = fiber.data = fiber.waiter = None
            self._park()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
            self._finish()

    # -- waiting -------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of virtual time."""
        await self.sleep_until(self.now + seconds, INF)

    async def sleep_until(self, when: float, prio: float = INF) -> None:
        """Wait until the virtual instant ``when``, taken in order ``prio`` at that instant."""
        if when <= self.now and prio == INF:
            await anyio.lowlevel.checkpoint()
            return
        fiber = _FIBER.get()
        wake, wake_prio = when, prio
        for scope in fiber.scopes:
            if scope.deadline < wake or (scope.deadline == wake and scope.prio < wake_prio):
                wake, wake_prio = scope.deadline, scope.prio
        fiber.end, fiber.end_prio = when, prio
        entry = [wake, wake_prio, next(self._order), fiber]
        fiber.parked = entry
        if self._asyncio:
            assert self._loop is not None  # noqa: S101 - set by run()
            waiter = fiber.waiter = self._loop.create_future()
            heapq.heappush(self._heap, entry)
            self._park()
            try:
                await waiter
            finally:
                self._unpark(fiber, entry)
            return
        event = fiber.waiter = anyio.Event()
        heapq.heappush(self._heap, entry)
        self._park()
        try:
            await event.wait()
        finally:
            self._unpark(fiber, entry)

    def woken(self, fiber: Fiber) -> None:
        """``fiber`` was woken by other means than this clock (a scope cancelled from
        outside): it runs from now on."""
        entry = fiber.parked
        if entry is not None:
            fiber.parked = None
            entry[3] = None
            self._running += 1

    def _unpark(self, fiber: Fiber, entry: list[Any]) -> None:
        if fiber.parked is entry:  # woken by something other than this clock: count it back
            fiber.parked = None
            entry[3] = None
            self._running += 1

    def retime(self, fiber: Fiber, when: float) -> None:
        """Move the end of the sleep ``fiber`` waits in to ``when`` (a probe due sooner)."""
        entry = fiber.parked
        if entry is None:
            return
        entry[3] = None
        fiber.end, fiber.end_prio = when, INF
        fresh = [when, INF, next(self._order), fiber]
        fiber.parked = fresh
        heapq.heappush(self._heap, fresh)

    def move_on_after(self, seconds: float) -> Scope:
        """A scope cancelled ``seconds`` from now (the engine's timeouts)."""
        return self.scope(self.now + seconds, INF)

    def scope(self, deadline: float, prio: float = INF) -> Scope:
        """A scope of the running task cancelled at the virtual instant ``deadline``."""
        return Scope(self, _FIBER.get(), deadline, prio)

    # -- the clock's own loop ------------------------------------------------------------

    def _park(self) -> None:
        self._running -= 1
        if self._running == 0:
            self._step()

    def _wake(self, fiber: Fiber) -> None:
        fiber.parked = None
        self._running += 1
        # The outermost expired scope (cancelling it cancels the inner ones), unless the
        # sleep ends first at this instant.
        due = (fiber.end, fiber.end_prio) if fiber.end <= self.now else None
        for scope in fiber.scopes:
            if scope.deadline <= self.now and (due is None or (scope.deadline, scope.prio) < due):
                scope.cancel_now()
                return
        if due is None:
            raise AssertionError("a fiber was woken before its sleep or any scope ended")
        if self._asyncio:
            fiber.waiter.set_result(None)
        else:
            fiber.waiter.set()

    def _step(self) -> None:
        """Nothing runs: take the next happenings, one at a time, until something does."""
        heap = self._heap
        while self._running == 0 and heap and not self._over:
            entry = heapq.heappop(heap)
            target = entry[3]
            if target is None:
                continue
            self.now = max(self.now, entry[0])
            if type(target) is Fiber:
                self._wake(target)
            else:
                target()
        if self._running == 0 and not heap:
            self._finish()

    def _finish(self) -> None:
        self._over = True
        done = self._done
        if done is None:
            return
        if self._asyncio:
            if not done.done():
                done.set_result(None)
        else:
            done.set()

    async def run(self, start: Callable[[], object] | None = None) -> None:
        """Run the world until nothing runs and nothing is due; ``start`` (optional) is called
        first, on the clock. Raises what a task of the world raised."""
        self._asyncio = on_asyncio()
        if self._asyncio:
            self._loop = asyncio.get_running_loop()
            self._done = self._loop.create_future()
            if start is not None:
                start()
            self._step()
            try:
                await self._done
            finally:
                self._over = True
                if self._error is not None or not self._done.done():
                    await self._cancel_all()
            if self._error is not None:
                raise self._error
            return
        self._done = anyio.Event()
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                if start is not None:
                    start()
                self._step()
                await self._done.wait()
        except BaseExceptionGroup as raised:
            if len(raised.exceptions) == 1:
                raise raised.exceptions[0] from None
            raise

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
