"""The failover engine: the rooms composed, and the lifecycle.

- ``registry``: the clients, their ids and calling conventions, the order of a call;
- ``runner``: attempts, backoff, deadlines and failover, for calls and streams alike;
- ``monitor``: health from calls and probes (``transitions`` rules), the probe and follow loops;
- ``log``: every event appended and folded live with the fold ``replay`` uses.

Building an engine reads nothing of the log; its first async use loads it, the event loop free
meanwhile (a synchronous accessor used before that loads it at once; see ``livelog``).

The engine owns the lifecycle: ``async with`` runs the loops and, however the block is left
(return, exception, cancellation), closes the engine; ``aclose`` stops new calls, lets calls in
flight finish within a grace period, cuts the rest short (each still ends in one terminal
event), then records ``engine_stopped`` and closes the log.
"""

from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
from loguru import logger

from .calls import CallOutcome, EngineClosedError, check_positive
from .errors import ModelError
from .events import EVENTS_VERSION, EngineStarted, EngineStopped, Event, Maintenance
from .health import HealthState
from .ledger import Fingerprint
from .livelog import LiveLog, WallClock
from .monitor import HealthMonitor
from .policies import HealthPolicy, RetryPolicy
from .pricing import Price, prices_by_model, response_tokens
from .projections import Metrics, Snapshot
from .protocols import Clock, EventStore, Params, Sleep, Timer
from .registry import ClientRegistry
from .retry_budget import RetryBudget
from .runner import CallRunner

if TYPE_CHECKING:
    from .streaming import FailoverStream

DEFAULT_GRACE = 10.0


class FailoverEngine:
    """Tries model clients in a fixed order with retries, backoff, deadlines and health.

    Use ``MultiModelFailover`` (the public facade) unless you inject every seam yourself.
    ``retry_budget``: one shared by the engines of a process (on their clock), or a replay's.
    """

    def __init__(
        self,
        clients: Sequence[Any] | Mapping[str, Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        health_check_interval: float = 30,
        *,
        health_policy: HealthPolicy | Mapping[str, Any] | None = None,
        event_store: EventStore,
        sleep: Sleep,
        clock: Clock,
        timer: Timer,
        wall_clock: WallClock,
        rng: random.Random,
        call_ids: Callable[[], str],
        fingerprint: Fingerprint | None = None,
        follow_interval: float | None = None,
        prices: Mapping[str, Price | Mapping[str, Any]] | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.registry = ClientRegistry(clients)
        self.prices = prices_by_model(prices, self.registry.check_known)
        self.retry_policy = RetryPolicy.coerce(retry_policy)
        self.health_policy = HealthPolicy.coerce(health_policy)
        self.health_check_interval = check_positive("health_check_interval", health_check_interval)
        if follow_interval is None:
            follow_interval = getattr(event_store, "follow_interval", None)
        self.follow_interval = (
            None if follow_interval is None else check_positive("follow_interval", follow_interval)
        )
        self.event_store = event_store
        self._timer = timer
        self._now = wall_clock
        self.log = LiveLog(event_store, shared_health=self.health_policy.scope == "fleet")
        self.monitor = HealthMonitor(
            self.registry,
            self.log,
            self.health_policy,
            clock=clock,
            sleep=sleep,
            timer=timer,
            now=wall_clock,
            interval=self.health_check_interval,
            follow_interval=self.follow_interval,
        )
        self.runner = CallRunner(
            self.registry,
            self.log,
            self.monitor,
            self.retry_policy,
            clock=clock,
            sleep=sleep,
            timer=timer,
            now=wall_clock,
            rng=rng,
            call_ids=call_ids,
            fingerprint=fingerprint,
            prices=self.prices,
            retry_budget=retry_budget,
        )
        self.log.on_rotation_change = _on_rotation_change(self.runner, self.monitor)
        self._closed = False
        self._stopped: anyio.Event | None = None  # set once a close has finished
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loop_scope: anyio.CancelScope | None = None
        self.log.pin()
        self.log.emit(
            EngineStarted(
                at=wall_clock(),
                models=self.registry.ids,
                retry_policy=self.retry_policy.to_dict(),
                health_policy=self.health_policy.to_dict(),
                events_version=EVENTS_VERSION,
            )
        )

    # -- the live view -------------------------------------------------------------------

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The configured model ids, in configured order."""
        return self.registry.ids

    @property
    def states(self) -> dict[str, HealthState]:
        """Each configured model's health state now."""
        self.log.load()
        return {mid: self.monitor.state(mid) for mid in self.registry.ids}

    @property
    def rotation(self) -> list[str]:
        """The model ids the next call would try, in order."""
        self.log.load()
        return list(self.runner.plan()[0])

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has begun: no new call is accepted."""
        return self._closed

    def metrics(self) -> Metrics:
        """A copy of the live metrics; always equal to ``replay(event_store).metrics``."""
        return self.log.metrics()

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection (metrics, states, audit trail)."""
        return self.log.snapshot()

    def log_status(self) -> dict[str, Any]:
        """The event log's own health: write errors, dropped events, the last error."""
        return self.log.status()

    def events(self) -> Iterator[Event]:
        """The stored events, oldest first (a shortcut for ``event_store.read()``)."""
        return self.event_store.read()

    # -- calls ---------------------------------------------------------------------------

    async def call(
        self, prompt: Any, timeout: float | None = None, *, params: Params | None = None
    ) -> Any:
        """Answer ``prompt`` with the first client that succeeds; returns its response as is.
        ``params``: request options for this call only (``temperature``, ``tools``...), handed
        to each client's ``call(prompt, params=...)``; a client that takes none fails the
        attempt as ``bad_request`` rather than being sent the request without them.

        Raises ``AllModelsFailedError`` when every client is exhausted,
        ``DeadlineExceededError`` (a ``TimeoutError``) when ``timeout`` or the policy's
        ``call_budget`` runs out, the client's own ``ModelError(kind=bad_request)`` at once for
        a request no model could serve, and ``EngineClosedError`` when the engine is closed.
        """
        outcome = await self.call_with_outcome(prompt, timeout=timeout, params=params)
        return outcome.response

    async def call_with_outcome(
        self, prompt: Any, *, timeout: float | None = None, params: Params | None = None
    ) -> CallOutcome:
        """As ``call``, but returns the response with the serving model, counts and call id."""
        if not self.log.loaded:
            await self.log.aload()
        runner = self.runner
        call, order = runner.begin(prompt, timeout, params)
        try:
            response = await runner.run(call, order, runner.attempt)
            served = runner.attempt_succeeded(call, tokens=response_tokens(response))
            outcome = runner.ledger.succeeded(call, served, response)
        except ModelError:
            await runner.ledger.commit(call, "call_failed")
            raise
        except EngineClosedError:
            await self.log.commit()
            raise
        finally:
            if not call.ended:  # the caller cancelled: the only way out without an outcome
                runner.ledger.cancelled(call)
        await runner.ledger.commit(call, "call_succeeded")
        return outcome

    def open_stream(
        self, prompt: Any, timeout: float | None, recovery: str | None, params: Params | None = None
    ) -> FailoverStream[Any]:
        """Stream the answer as text chunks; failover until the first chunk arrives.

        After it, a failure raises ``StreamInterruptedError``, unless ``recovery`` is
        ``"restart"`` or ``"continue"``: the answer then goes on from the next client, after a
        ``StreamSwitch`` chunk (see ``core.streaming``). ``.outcome`` once it has ended.
        ``params`` as for ``call``, handed to each client's ``stream(prompt, params=...)``.
        The facade's ``stream`` types its chunks by ``recovery``.
        """
        from .streaming import open_stream  # noqa: PLC0415 - keeps calls import-light

        return open_stream(self.runner, self.log, prompt, timeout, recovery, params)

    # -- health and operators ------------------------------------------------------------

    async def check_health(self) -> dict[str, HealthState]:
        """Probe every client not in maintenance now; returns the states afterwards."""
        await self.log.aload()
        return await self.monitor.check_health()

    async def follow(self) -> int:
        """Fold in events other processes appended to the shared log; returns how many."""
        return await self.log.follow()

    async def set_maintenance(
        self, model_id: str, on: bool, *, reason: str = "", by: str = "api"
    ) -> None:
        """Take ``model_id`` out of rotation (``on=True``) or put it back (``on=False``).

        From the moment this returns, no call (in flight or new) calls a model put into
        maintenance.
        """
        self.registry.check_known(model_id)
        await self.log.aload()
        if self._closed:
            raise EngineClosedError("this MultiModelFailover is closed")
        self.log.emit(Maintenance(at=self._now(), model_id=model_id, on=on, reason=reason, by=by))
        logger.warning(
            "model {} maintenance {}: {}",
            model_id,
            "on" if on else "off",
            reason,
            model_id=model_id,
            by=by,
        )
        await self.log.commit()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise EngineClosedError("this MultiModelFailover is closed")
        if self._task_group is not None:
            raise RuntimeError("this MultiModelFailover is already running")
        try:
            await self.log.aload()
        except BaseException:  # the caller never gets the engine to close: close it here
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        group = anyio.create_task_group()
        await group.__aenter__()
        self._task_group = group
        self._loop_scope = anyio.CancelScope()
        group.start_soon(self._run_loops, self._loop_scope)
        return self

    async def _run_loops(self, scope: anyio.CancelScope) -> None:
        # Its own scope: closing stops the loops without cancelling the caller's block.
        with scope:
            await self.monitor.run()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._task_group = self._task_group, None
        try:
            if group is not None and self._loop_scope is not None:
                self._loop_scope.cancel()
                try:
                    await group.__aexit__(exc_type, exc, tb)
                except BaseExceptionGroup as raised:
                    # The task group wraps the block's own exception: the caller wrote
                    # ``except AllModelsFailedError``, not ``except*``. Let it leave as itself.
                    if exc is None or _others_than(raised, exc) is not None:
                        raise
        finally:
            await self.aclose()

    async def aclose(self, *, grace: float = DEFAULT_GRACE) -> None:
        """Close: no new calls; calls in flight get ``grace`` seconds to finish, then are cut
        short (each records ``call_cancelled`` with reason ``engine_closed`` and raises
        ``EngineClosedError``); then ``engine_stopped``, and the log is flushed and closed.
        """
        if self._loop_scope is not None:
            self._loop_scope.cancel()
        if self._closed:
            if self._stopped is not None:
                await self._stopped.wait()  # another close is under way: return once it ends
            return
        self._closed = True
        self._stopped = anyio.Event()
        self.runner.ledger.closing = True
        self.monitor.close()
        try:
            await self.log.settle()  # a load under way reads the store: let it end first
            await self._drain(grace)
        finally:
            self._end_all_calls()  # those still open after a cancelled close
            try:
                self.log.emit(EngineStopped(at=self._now()))
            finally:
                with anyio.CancelScope(shield=True):
                    await self.event_store.aclose()
                self._stopped.set()

    def _end_all_calls(self) -> None:
        for call in list(self.runner.ledger.in_flight):
            call.interrupt()
            self.runner.ledger.cancelled(call, "engine_closed")

    async def _drain(self, grace: float) -> None:
        """Wait up to ``grace`` for the calls in flight, then cut them short and let each
        record its end."""
        ledger = self.runner.ledger
        if not ledger.in_flight:
            return
        idle = anyio.Event()
        ledger.on_idle = idle.set
        with self._timer.move_on_after(grace):
            await idle.wait()
        waiting = [call for call in ledger.in_flight if call.cut is not None]
        for call in list(ledger.in_flight):
            call.interrupt()
        self._end_stragglers()  # the suspended ones: nothing of theirs runs to record it
        if waiting:
            with self._timer.move_on_after(1.0):
                await idle.wait()

    def _end_stragglers(self) -> None:
        """Record the end of calls open but waiting nowhere we can cut (a stream its caller
        left suspended); they raise ``EngineClosedError`` when resumed."""
        ledger = self.runner.ledger
        for call in list(ledger.in_flight):
            if call.cut is None:
                call.closed = True
                ledger.cancelled(call, "engine_closed")

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or getattr(self.event_store, "closed", False):
            return  # closed, or its log closed by hand: nothing is left open
        self._closed = True
        if sys.is_finalizing():
            return  # the writer thread may be frozen already: closing could wait forever
        warnings.warn(
            f"unclosed MultiModelFailover ({', '.join(self.registry.ids)}): use `async with` "
            "or `await aclose()`",
            ResourceWarning,
            source=self,
            stacklevel=2,
        )
        self.runner.ledger.closing = True
        self._end_all_calls()  # a stream its caller still holds: ended now, raises if resumed
        self.event_store.close()


def _on_rotation_change(runner: CallRunner, monitor: HealthMonitor) -> Callable[[], None]:
    """What the log calls after a state may have changed (not a method: the engine must not
    be kept alive by its own log, or an engine never closed would never warn)."""

    def changed() -> None:
        runner.forget_plan()
        monitor.rotation_changed()

    return changed


def _others_than(group: BaseExceptionGroup[BaseException], exc: BaseException) -> object:
    """The part of ``group`` that is not ``exc`` itself, or None."""
    _, rest = group.split(lambda e: e is exc)
    return rest
