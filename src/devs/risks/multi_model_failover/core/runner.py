"""The call runner: one loop of attempts, backoff, deadlines and failover, for calls and streams.

A call tries the clients of its order (the rotation when it started) one after another. Each
client gets up to ``max_attempts`` attempts with backoff between them; moving to the next client
does not wait; a client is never visited twice in one call, and a client put into maintenance
meanwhile is not called again. ``attempt_once`` is what differs between a call (the answer) and
a stream (its first chunk); everything else is here, once. The ledger records each step.

A failed attempt is returned as a ``Failure``, not raised: on the failover path a raise and
catch per attempt costs more than the rest of the attempt's bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
from loguru import logger

from .backoff import backoff_delay
from .calls import (
    Call,
    FailReason,
    Failure,
    GaveUp,
    check_params,
    check_positive,
    check_prompt,
    failure,
    foreign_cancel_failure,
    no_params_failure,
    timed_out,
)
from .cancellation import on_asyncio
from .clock import LoopTime
from .errors import ErrorKind
from .events import RetryBudgetExhausted
from .health import HealthState
from .ledger import CallLedger
from .livelog import LiveLog, WallClock
from .monitor import HealthMonitor
from .policies import RetryPolicy
from .pricing import NO_TOKENS, Price, Tokens
from .protocols import Clock, Sleep, Timer
from .registry import ClientRegistry, RegisteredClient
from .retry_budget import RetryBudget

_T = TypeVar("_T")
AttemptOnce = Callable[[RegisteredClient, Any, float, Call], Awaitable[_T | Failure]]


class CallRunner:
    """Runs calls through the order of clients; see the module docstring."""

    def __init__(
        self,
        registry: ClientRegistry,
        log: LiveLog,
        monitor: HealthMonitor,
        policy: RetryPolicy,
        *,
        clock: Clock,
        sleep: Sleep,
        timer: Timer,
        now: WallClock,
        rng: Any,
        call_ids: Callable[[], str],
        fingerprint: Callable[[Any], tuple[int, str]] | None,
        prices: Mapping[str, Price] | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self._registry = registry
        self._log = log
        self.ledger = CallLedger(log, clock=clock, now=now, fingerprint=fingerprint, prices=prices)
        self.ledger.on_trials_end = monitor.end_trials
        self._monitor = self.monitor = monitor
        self.policy = policy
        self._clock = self.clock = clock
        self._sleep = sleep
        self._timer = self.timer = timer
        self._native_timer = isinstance(timer, LoopTime)
        self._rng = rng
        self._call_ids = call_ids
        self._budget = retry_budget or RetryBudget(
            policy.retry_budget_ratio, policy.retry_budget_min_per_s, clock
        )
        self._plan: tuple[tuple[str, ...], bool] | None = None
        self._plan_unhealthy: tuple[str, ...] = ()  # of the plan: who may get a trial

    # -- the order -----------------------------------------------------------------------

    def plan(self) -> tuple[tuple[str, ...], bool]:
        """The order of the next call and whether it is the last resort; cached until a
        state changes (``forget_plan``)."""
        plan = self._plan
        if plan is None:
            states = {mid: self._monitor.state(mid) for mid in self._registry.ids}
            plan = self._plan = self._registry.plan(states)
            self._plan_unhealthy = tuple(
                mid for mid, state in states.items() if state is HealthState.UNHEALTHY
            )
        return plan

    def forget_plan(self) -> None:
        """A state changed: work the order out again for the next call."""
        self._plan = None

    def _with_trials(self, call: Call, order: tuple[str, ...]) -> tuple[str, ...]:
        """``order`` with the unhealthy clients this call may try as their trial, each in its
        configured place (see ``HealthPolicy``)."""
        trials = tuple(mid for mid in self._plan_unhealthy if self._monitor.admit_trial(mid))
        if not trials:
            return order
        call.trials = call.trial_slots = trials
        return tuple(mid for mid in self._registry.ids if mid in order or mid in trials)

    # -- a call's beginning and end ------------------------------------------------------

    def begin(
        self,
        prompt: Any,
        timeout: float | None,
        params: Mapping[str, Any] | None = None,
        stream: str | None = None,
    ) -> tuple[Call, tuple[str, ...]]:
        """Check the arguments, record ``call_started``; the call and its order of clients.
        ``stream``: the recovery of a stream (None: a call)."""
        check_prompt(prompt)
        frozen = check_params(params)
        budget = self.policy.call_budget
        if timeout is not None:
            timeout = check_positive("timeout", timeout)
            budget = min(budget, timeout)
        start = self._clock()
        call = Call(self._call_ids(), start, start + budget, prompt, frozen)
        order, last_resort = self.plan()
        call.last_resort = last_resort
        if self._plan_unhealthy and not last_resort:
            order = self._with_trials(call, order)
        try:
            self.ledger.started(call, order, last_resort, timeout, stream)
        except BaseException:
            self.ledger.release_trials(call)  # no terminal event will release them
            raise
        self._budget.record_call()
        return call, order

    # -- the loop over clients -----------------------------------------------------------

    async def run(
        self,
        call: Call,
        order: Sequence[str],
        attempt_once: AttemptOnce[_T],
        last: GaveUp | None = None,
        *,
        exhausted: FailReason = FailReason.EXHAUSTED,
    ) -> _T:
        """Give each client in ``order`` its attempts, failing over between them; the first
        success (``attempt_once``'s result) or the call's error, raised. ``last``: the client
        given up on just before (a stream started again elsewhere): the first step is then a
        failover from it. ``exhausted``: the reason recorded when every client gave up
        (``stream_interrupted``, for a stream's rescue, whatever ended it)."""
        for model_id in order:
            if self._monitor.state(model_id) is HealthState.MAINTENANCE:
                continue  # taken out by an operator since the call started
            if last is not None:
                stop = self._stop_reason(call)
                if stop is not None:
                    last = GaveUp(_stop_kind(stop, last.kind), last.message, stop, last.error)
                    break
                self.ledger.failover(call, model_id, last.kind)
            call.model_id = model_id
            try:
                return await self._attempts(call, model_id, attempt_once)
            except GaveUp as gave_up:
                last = gave_up
                if gave_up.stop is not None:
                    break
        if last is None:
            last = GaveUp(
                ErrorKind.UNKNOWN, "every client is in maintenance", FailReason.NO_CLIENTS
            )
        if exhausted is FailReason.STREAM_INTERRUPTED:
            last.stop = None  # whatever ended the rescue, the stream was interrupted
        raise self.ledger.failed(call, last, exhausted)

    def _stop_reason(self, call: Call) -> FailReason | None:
        """Why the call must end now, before its next attempt, or None."""
        cap = self.policy.max_total_attempts
        if cap is not None and call.attempts >= cap:
            return FailReason.MAX_TOTAL_ATTEMPTS
        if call.deadline - self._clock() <= 0:
            return FailReason.DEADLINE
        return None

    # -- the attempts on one client ------------------------------------------------------

    async def _attempts(self, call: Call, model_id: str, attempt_once: AttemptOnce[_T]) -> _T:
        """Attempts on one client until one succeeds, or ``GaveUp`` (raised)."""
        client = self._registry[model_id]
        previous_delay: float | None = None
        last_kind = ErrorKind.UNKNOWN
        for attempt in itertools.count(1):
            stop = self._stop_reason(call)
            if stop is not None:
                raise GaveUp(_stop_kind(stop, last_kind), f"{stop} reached", stop)
            if attempt > 1 and self._monitor.state(model_id) is HealthState.MAINTENANCE:
                raise GaveUp(last_kind, f"{model_id} was put into maintenance")
            remaining = call.deadline - self._clock()
            call.attempts += 1
            call.attempt = attempt
            self.ledger.attempt_started(call, model_id, attempt, model_id in call.trials)
            call.attempt_started = self._clock()
            result = await attempt_once(client, call.prompt, remaining, call)
            if call.closed:
                raise self.ledger.closed_during(call)
            if not isinstance(result, Failure):
                return result
            delay = self._after_failure(call, model_id, attempt, result, previous_delay)
            last_kind = result.kind
            await self._backoff(call, delay)
            previous_delay = delay
        raise AssertionError("unreachable")  # pragma: no cover

    async def _backoff(self, call: Call, delay: float) -> None:
        """Wait ``delay`` on the injected sleep; an engine that closes cuts the wait short."""
        if self._native_timer and on_asyncio():
            try:
                async with asyncio.timeout(None) as timer:
                    call.cut = timer
                    await self._sleep(delay)
            except TimeoutError:
                pass  # cut short by ``Call.interrupt``
        else:
            with anyio.CancelScope() as scope:
                call.cut = scope
                await self._sleep(delay)
        call.cut = None
        if call.closed:
            raise self.ledger.closed_during(call)

    @staticmethod
    def attempt_limit(remaining: float, timeout: float | None) -> tuple[float, bool]:
        """How long the next attempt may take, and whether its own ``timeout`` (the policy's
        ``attempt_timeout``, or a stream's ``first_token_timeout``) is the bound rather than
        the call's remaining budget."""
        if timeout is not None and timeout < remaining:
            return timeout, True
        return remaining, False

    async def attempt(
        self, client: RegisteredClient, prompt: Any, remaining: float, call: Call
    ) -> Any:
        """One attempt of a call, bounded by ``attempt_timeout`` and the call's budget.

        Returns the response, or a ``Failure``. On asyncio in real time the loop's own
        ``asyncio.timeout`` bounds it: it costs half an anyio cancel scope, on the hottest path
        of all. A ``TimeoutError`` the client raises itself is the client's failure: only the
        expiry of our own timer is a timeout of ours.
        """
        limit, by_attempt = self.attempt_limit(remaining, self.policy.attempt_timeout)
        params = call.params
        if params is None:
            # An async client is awaited directly: no wrapper coroutine on the hot path.
            answer = client.client.call if client.call_is_async else client.call
        elif not client.call_takes_params:
            return no_params_failure(client.model_id, params)
        else:
            answer = partial(
                client.client.call if client.call_is_async else client.call, params=params
            )
        try:
            if self._native_timer and on_asyncio():
                timer = asyncio.timeout(limit)
                call.cut = timer
                try:
                    async with timer:
                        return await answer(prompt)
                except TimeoutError:
                    if not timer.expired():
                        raise
            else:
                with self._timer.move_on_after(limit) as scope:
                    call.cut = scope
                    return await answer(prompt)
        except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
            return failure(exc, prompt)
        except asyncio.CancelledError as exc:
            return foreign_cancel_failure(exc, prompt)
        finally:
            call.cut = None
        return timed_out(limit, by_attempt, "attempt timed out after", call)

    def _after_failure(
        self,
        call: Call,
        model_id: str,
        attempt: int,
        result: Failure,
        previous_delay: float | None,
    ) -> float:
        """Record a failed attempt; return the backoff delay, or raise ``GaveUp``."""
        kind = result.kind
        delay = self._retry_delay(call, model_id, attempt, result, previous_delay)
        self.ledger.attempt_failed(call, model_id, result, delay is None)
        logger.info(
            "attempt {} on {} failed: {}",
            attempt,
            model_id,
            result.message,
            call_id=call.call_id,
            model_id=model_id,
            error_kind=kind.value,
        )
        if delay is None:
            if model_id in call.trials:
                self._monitor.trial_failed(model_id, result.message)
            self._monitor.gave_up_on(model_id, kind, result.message)
            raise GaveUp(kind, result.message, self._stop_after(kind), result.error)
        self.ledger.backoff(call, model_id, delay, result.retry_after)
        return delay

    def _retry_delay(
        self,
        call: Call,
        model_id: str,
        attempt: int,
        result: Failure,
        previous_delay: float | None,
    ) -> float | None:
        """The wait before retrying the same client, or None to give up on it."""
        policy = self.policy
        if policy.action(result.kind) != "retry" or attempt >= policy.max_attempts:
            return None
        if model_id in call.trials:
            return None  # a trial is one attempt
        if call.last_resort and self._monitor.state(model_id) is HealthState.UNHEALTHY:
            return None  # every model is down: one attempt each, not a retry storm
        if policy.max_total_attempts is not None and call.attempts >= policy.max_total_attempts:
            return None
        delay = backoff_delay(policy, attempt, self._rng, previous_delay)
        if result.kind is ErrorKind.RATE_LIMITED and result.retry_after is not None:
            delay = max(delay, result.retry_after)
        # A wait that would run past the deadline is pointless: move on now instead.
        if self._clock() + delay >= call.deadline:
            return None
        if not self._budget.try_retry():
            self._log.emit(
                RetryBudgetExhausted(at=self.ledger.now(), call_id=call.call_id, model_id=model_id)
            )
            logger.warning(
                "retry budget exhausted; failing over from {} instead of retrying",
                model_id,
                model_id=model_id,
            )
            return None
        return delay

    def _stop_after(self, kind: ErrorKind) -> FailReason | None:
        """Why a failure of ``kind`` ends the whole call, or None when the next client may
        be tried."""
        if kind is ErrorKind.DEADLINE:
            return FailReason.DEADLINE
        if self.policy.action(kind) != "fail":
            return None
        return FailReason.BAD_REQUEST if kind is ErrorKind.BAD_REQUEST else FailReason.FAIL_FAST

    def attempt_succeeded(self, call: Call, *, skipped: int = 0, tokens: Tokens = NO_TOKENS) -> str:
        """Record the call's current attempt as a success (with the ``tokens`` its answer
        reported); a degraded or unhealthy client recovers. Returns the serving model's id."""
        model_id = call.model_id or ""
        self.ledger.attempt_succeeded(call, model_id, skipped, tokens)
        self._monitor.succeeded(model_id, trial=model_id in call.trials)
        return model_id


def _stop_kind(stop: FailReason, last_kind: ErrorKind) -> ErrorKind:
    return ErrorKind.DEADLINE if stop is FailReason.DEADLINE else last_kind


__all__ = ["CallRunner", "FailReason", "GaveUp"]
