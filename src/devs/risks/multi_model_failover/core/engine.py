"""The failover engine: ordered clients, retries with backoff, deadlines, health, events.

Every decision becomes an event. ``_emit`` appends the event to the store and folds it into the
live snapshot with the same ``projections.apply`` that ``replay`` uses, so the live view always
equals the replayed one.

Order of a call: the rotation at the moment the call starts (configured order, skipping
unhealthy and maintenance clients; all non-maintenance clients as a last resort when that
leaves none). Each client gets up to ``max_attempts`` attempts with backoff between them; the
move to the next client does not wait. A client is never visited twice in one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import itertools
import math
import random
import secrets
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.abc
import msgspec
from loguru import logger

from .backoff import backoff_delay
from .errors import (
    AllModelsFailedError,
    AttemptRecord,
    DeadlineExceededError,
    ErrorKind,
    ModelError,
)
from .events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    EngineStopped,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    RetryBudgetExhausted,
    StateChanged,
)
from .health import HealthMachine, HealthState
from .policies import HealthPolicy, RetryPolicy
from .projections import Metrics, Snapshot, apply
from .protocols import Clock, EventStore, Sleep
from .retry_budget import RetryBudget
from .scrub import describe_exception, without_prompt

WallClock = Callable[[], datetime]
_T = TypeVar("_T")


class CallOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A successful call: the response unchanged, who served it and what it took."""

    response: Any
    model_id: str
    call_id: str
    attempts: int
    failovers: int
    latency: float


class _Client:
    """A configured client with its calling convention worked out once."""

    __slots__ = ("call_is_async", "client", "model_id", "probe_is_async")

    def __init__(self, model_id: str, client: Any) -> None:
        for method in ("call", "health_check"):
            if not callable(getattr(client, method, None)):
                raise TypeError(f"client {model_id!r} has no callable {method}() method")
        self.model_id = model_id
        self.client = client
        self.call_is_async = inspect.iscoroutinefunction(client.call)
        self.probe_is_async = inspect.iscoroutinefunction(client.health_check)

    async def call(self, prompt: Any) -> Any:
        if self.call_is_async:
            return await self.client.call(prompt)
        # A sync client must never block the event loop; an abandoned thread is the price of
        # being able to time out a call that blocks forever.
        result = await anyio.to_thread.run_sync(self.client.call, prompt, abandon_on_cancel=True)
        return await result if inspect.isawaitable(result) else result

    async def health_check(self) -> bool:
        if self.probe_is_async:
            return bool(await self.client.health_check())
        result = await anyio.to_thread.run_sync(self.client.health_check, abandon_on_cancel=True)
        return bool(await result if inspect.isawaitable(result) else result)


def _identify(clients: Sequence[Any] | Mapping[str, Any]) -> list[_Client]:
    """Model ids: mapping keys, else a ``model_id`` str attribute, else ``client-N``."""
    if isinstance(clients, Mapping):
        pairs = [(str(key), client) for key, client in clients.items()]
    elif isinstance(clients, Sequence) and not isinstance(clients, str | bytes):
        pairs = []
        for index, client in enumerate(clients):
            model_id = getattr(client, "model_id", None)
            pairs.append((model_id if isinstance(model_id, str) else f"client-{index}", client))
    else:
        raise TypeError(f"clients must be a sequence or a mapping, got {type(clients).__name__}")
    if not pairs:
        raise ValueError("clients must not be empty: give at least one model client")
    seen: set[str] = set()
    for model_id, _ in pairs:
        if not model_id:
            raise ValueError("a client's model id must not be empty")
        if model_id in seen:
            raise ValueError(f"duplicate model id {model_id!r}: each client needs its own id")
        seen.add(model_id)
    return [_Client(model_id, client) for model_id, client in pairs]


def _check_prompt(prompt: object) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list | tuple) and all(isinstance(m, Mapping) for m in prompt):
        return
    raise TypeError(
        f"prompt must be a str or a list of chat messages (dicts), got {type(prompt).__name__}"
    )


def _check_positive(name: str, value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class _Call:
    """The running state of one call."""

    __slots__ = (
        "attempts",
        "call_id",
        "deadline",
        "failovers",
        "model_id",
        "prompt",
        "records",
        "start",
    )

    def __init__(self, call_id: str, start: float, deadline: float, prompt: Any) -> None:
        self.call_id = call_id
        self.prompt = prompt
        self.start = start
        self.deadline = deadline
        self.attempts = 0
        self.failovers = 0
        self.model_id: str | None = None
        self.records: list[AttemptRecord] = []


class _GaveUp(Exception):
    """A client is exhausted for this call; ``stop`` ends the whole call."""

    def __init__(self, kind: ErrorKind, message: str, stop: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stop = stop


class _Failure:
    """One failed attempt, already classified and scrubbed.

    Returned, not raised: on the failover path a raise and catch per attempt costs more than
    the rest of the attempt's bookkeeping.
    """

    __slots__ = ("kind", "message", "retry_after")

    def __init__(self, kind: ErrorKind, message: str, retry_after: float | None = None) -> None:
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def _failure(exc: Exception, prompt: Any) -> _Failure:
    """Classify what a client raised; its text scrubbed of secrets and of the prompt."""
    if isinstance(exc, ModelError):
        return _Failure(exc.kind, without_prompt(exc.message, prompt), exc.retry_after)
    kind = ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.UNKNOWN
    return _Failure(kind, without_prompt(describe_exception(exc), prompt))


def _timed_out(limit: float, by_attempt: bool, what: str) -> _Failure:
    """The attempt's own timeout (``what``, a timeout) or the call's deadline ran out."""
    if by_attempt:
        return _Failure(ErrorKind.TIMEOUT, f"{what} {limit:g}s")
    return _Failure(ErrorKind.DEADLINE, f"call deadline reached after {limit:g}s")


def _on_asyncio() -> bool:
    try:
        asyncio.current_task()
    except RuntimeError:  # no asyncio loop in this thread: trio, or another backend
        return False
    return True


class FailoverEngine:
    """Tries model clients in a fixed order with retries, backoff, deadlines and health.

    Use ``MultiModelFailover`` (the public facade) unless you inject every seam yourself.
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
        wall_clock: WallClock,
        rng: random.Random,
        fingerprint_prompts: bool = False,
        follow_interval: float | None = None,
    ) -> None:
        self._clients = _identify(clients)
        self._by_id = {c.model_id: c for c in self._clients}
        self.retry_policy = RetryPolicy.coerce(retry_policy)
        self.health_policy = HealthPolicy.coerce(health_policy)
        self.health_check_interval = _check_positive("health_check_interval", health_check_interval)
        self.event_store = event_store
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._now: WallClock = wall_clock  # an attribute, not a method: one frame less per event
        self._plan_cache: tuple[tuple[str, ...], bool] | None = None
        self._rng = rng
        self._budget = RetryBudget(
            self.retry_policy.retry_budget_ratio,
            self.retry_policy.retry_budget_min_per_s,
            clock,
        )
        prefix = uuid.uuid4().hex[:8]
        self._call_ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._ticket = 0
        self._closed = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loop_scope: anyio.CancelScope | None = None
        self._fingerprint_salt = secrets.token_bytes(16) if fingerprint_prompts else None
        if follow_interval is None:
            follow_interval = getattr(event_store, "follow_interval", None)
        self.follow_interval = (
            None if follow_interval is None else _check_positive("follow_interval", follow_interval)
        )
        self._follow_failing = False
        # ``_snap`` is the whole log (what ``replay`` gives); ``_health`` is the view that
        # decides the rotation: the same object with the fleet scope, this replica's own
        # events and everyone's maintenance with the replica scope.
        self._snap = Snapshot()
        self._health = self._snap if self.health_policy.scope == "fleet" else Snapshot()
        self._cursor = 0
        self._fold_others(event_store.read())
        self._machines = {
            c.model_id: HealthMachine(self._health.state_of(c.model_id).state)
            for c in self._clients
        }
        self._emit(
            EngineStarted(
                at=wall_clock(),
                models=tuple(self._by_id),
                retry_policy=self.retry_policy.to_dict(),
                health_policy=self.health_policy.to_dict(),
            )
        )

    # -- the live view -------------------------------------------------------------------

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The configured model ids, in configured order."""
        return tuple(self._by_id)

    @property
    def states(self) -> dict[str, HealthState]:
        """Each configured model's health state now."""
        return {mid: self._health.state_of(mid).state for mid in self._by_id}

    @property
    def rotation(self) -> list[str]:
        """The model ids the next call would try, in order."""
        return list(self._plan()[0])

    def metrics(self) -> Metrics:
        """A copy of the live metrics; always equal to ``replay(event_store).metrics``."""
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._snap.metrics), type=Metrics)

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection (metrics, states, audit trail)."""
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._snap), type=Snapshot)

    def _plan(self) -> tuple[tuple[str, ...], bool]:
        """The order of the next call and whether it is the last resort; cached until a
        state changes (``_emit`` and ``follow`` drop the cache)."""
        plan = self._plan_cache
        if plan is None:
            plan = self._plan_cache = self._make_plan()
        return plan

    def _make_plan(self) -> tuple[tuple[str, ...], bool]:
        states = self._health.states
        order = tuple(mid for mid in self._by_id if states[mid].state.in_rotation)
        if order:
            return order, False
        fallback = tuple(
            mid for mid in self._by_id if states[mid].state is not HealthState.MAINTENANCE
        )
        return fallback, True

    # -- events --------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._ticket = self.event_store.append(event)
        apply(self._snap, event)
        if self._health is not self._snap:
            apply(self._health, event)
        if type(event) in _CHANGES_ROTATION:
            self._plan_cache = None

    def _fold_others(self, events: Iterable[Event]) -> int:
        """Fold in events other writers stored (from ``read``/``read_others``) once each."""
        folded = 0
        local = self._health if self._health is not self._snap else None
        for event in events:
            if event.seq <= self._cursor:  # a concurrent follow() already folded it
                continue
            self._cursor = event.seq
            apply(self._snap, event)
            if local is not None and type(event) is Maintenance:
                apply(local, event)  # operator actions are fleet-wide in every scope
            folded += 1
        return folded

    def _change_state(self, model_id: str, trigger: str, reason: str) -> None:
        machine = self._machines[model_id]
        before = machine.current
        after = machine.fire(trigger)
        if after is None:
            return
        self._emit(
            StateChanged(
                at=self._now(),
                model_id=model_id,
                from_state=before,
                to_state=after,
                reason=reason,
            )
        )
        logger.info(
            "model {} is now {} ({})",
            model_id,
            after.value,
            reason,
            model_id=model_id,
            from_state=before.value,
            to_state=after.value,
        )

    def _sync_machines(self) -> None:
        for model_id, machine in self._machines.items():
            machine.sync(self._health.state_of(model_id).state)

    # -- calls ---------------------------------------------------------------------------

    async def call(self, prompt: Any, timeout: float | None = None) -> Any:
        """Answer ``prompt`` with the first client that succeeds; returns its response as is.

        Raises ``AllModelsFailedError`` when every client is exhausted,
        ``DeadlineExceededError`` (a ``TimeoutError``) when ``timeout`` or the policy's
        ``call_budget`` runs out, and ``ModelError(kind=bad_request)`` at once for a request
        no model could serve.
        """
        outcome = await self.call_with_outcome(prompt, timeout=timeout)
        return outcome.response

    async def call_with_outcome(self, prompt: Any, *, timeout: float | None = None) -> CallOutcome:
        """As ``call``, but returns the response with the serving model, counts and call id."""
        call, order = self._begin_call(prompt, timeout)
        terminal = False
        try:
            outcome = await self._through_order(call, order, self._serve)
            terminal = True
        except ModelError:
            terminal = True
            await self.event_store.wait_committed(self._ticket)
            raise
        finally:
            if not terminal:
                self._cancelled(call)
        await self.event_store.wait_committed(self._ticket)
        return outcome

    def _begin_call(self, prompt: Any, timeout: float | None) -> tuple[_Call, tuple[str, ...]]:
        """Check the arguments, record ``call_started``; the call and its order of clients.

        Shared by calls and streams.
        """
        _check_prompt(prompt)
        budget = self.retry_policy.call_budget
        if timeout is not None:
            budget = min(budget, _check_positive("timeout", timeout))
        if self._closed:
            raise RuntimeError("this MultiModelFailover is closed")
        start = self._clock()
        call = _Call(next(self._call_ids), start, start + budget, prompt)
        order, last_resort = self._plan()
        self._emit(self._call_started(call, order, last_resort, prompt))
        self._budget.record_call()
        return call, order

    def _cancelled(self, call: _Call) -> None:
        """Record that the caller cancelled ``call`` (its terminal event)."""
        self._emit(
            CallCancelled(
                at=self._now(),
                call_id=call.call_id,
                model_id=call.model_id,
                attempts=call.attempts,
                latency=self._clock() - call.start,
            )
        )

    def _call_started(
        self, call: _Call, order: tuple[str, ...], last_resort: bool, prompt: Any
    ) -> CallStarted:
        if self._fingerprint_salt is None:
            return CallStarted(
                at=self._now(), call_id=call.call_id, order=order, last_resort=last_resort
            )
        # Opt-in: a salted hash and the length let an operator match repeated prompts
        # without the log ever holding their text.
        text = prompt if isinstance(prompt, str) else msgspec.json.encode(prompt).decode()
        # surrogatepass: a str may hold lone surrogates (from JSON, say); hash it all the same.
        data = text.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._fingerprint_salt, data, hashlib.sha256).hexdigest()
        return CallStarted(
            at=self._now(),
            call_id=call.call_id,
            order=order,
            last_resort=last_resort,
            prompt_chars=len(text),
            prompt_hash=digest[:32],
        )

    def log_status(self) -> dict[str, Any]:
        """The event log's own health: write errors, dropped events, the last error."""
        store = self.event_store
        return {
            "errors": getattr(store, "errors", 0),
            "dropped": getattr(store, "dropped", 0),
            "last_error": getattr(store, "last_error", None),
        }

    async def _serve(self, call: _Call, model_id: str) -> CallOutcome:
        """A call's turn on one client: its attempts, then success (or ``_GaveUp``)."""
        response, attempt, started = await self._attempts(call, model_id, self._attempt)
        self._attempt_succeeded(call, model_id, attempt, started)
        return self._succeeded(call, model_id, response)

    async def _through_order(
        self,
        call: _Call,
        order: Sequence[str],
        attempt: Callable[[_Call, str], Awaitable[_T]],
    ) -> _T:
        """Give each client in ``order`` its attempts, failing over between them.

        ``attempt(call, model_id)`` returns on success or raises ``_GaveUp``. Shared by calls and
        streams so that both fail over, stop and fail the same way.
        """
        last: _GaveUp | None = None
        for model_id in order:
            if last is not None:
                stop = self._stop_reason(call)
                if stop is not None:
                    last = _GaveUp(_stop_kind(stop, last.kind), last.message, stop)
                    break
                self._failover(call, model_id, last.kind)
            call.model_id = model_id
            try:
                return await attempt(call, model_id)
            except _GaveUp as gave_up:
                last = gave_up
                if gave_up.stop is not None:
                    break
        if last is None:
            last = _GaveUp(
                ErrorKind.UNKNOWN, "no client available: all in maintenance", "no_clients"
            )
        raise self._failed(call, last)

    def _failover(self, call: _Call, to_model: str, reason: ErrorKind) -> None:
        from_model = call.model_id or ""
        call.failovers += 1
        self._emit(
            Failover(
                at=self._now(),
                call_id=call.call_id,
                from_model=from_model,
                to_model=to_model,
                reason=reason,
            )
        )
        logger.warning(
            "failover {} -> {} ({})",
            from_model,
            to_model,
            reason.value,
            call_id=call.call_id,
            from_model=from_model,
            to_model=to_model,
            reason=reason.value,
        )

    def _succeeded(self, call: _Call, model_id: str, response: Any) -> CallOutcome:
        latency = self._clock() - call.start
        self._emit(
            CallSucceeded(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempts=call.attempts,
                failovers=call.failovers,
                latency=latency,
            )
        )
        return CallOutcome(
            response=response,
            model_id=model_id,
            call_id=call.call_id,
            attempts=call.attempts,
            failovers=call.failovers,
            latency=latency,
        )

    def _failed(self, call: _Call, last: _GaveUp) -> ModelError:
        reason = last.stop or "exhausted"
        self._emit(
            CallFailed(
                at=self._now(),
                call_id=call.call_id,
                reason=reason,
                error_kind=last.kind,
                attempts=call.attempts,
                failovers=call.failovers,
                latency=self._clock() - call.start,
            )
        )
        if reason == ErrorKind.BAD_REQUEST.value:
            return ModelError(last.message, kind=ErrorKind.BAD_REQUEST, model_id=call.model_id)
        summary = "; ".join(f"{r.model_id}#{r.attempt}: {r.error_kind.value}" for r in call.records)
        error_type = DeadlineExceededError if reason == "deadline" else AllModelsFailedError
        return error_type(
            f"call {call.call_id} failed ({reason}) after {call.attempts} attempt(s): {summary}",
            attempts=call.records,
            call_id=call.call_id,
            kind=last.kind,
        )

    async def _attempts(
        self,
        call: _Call,
        model_id: str,
        attempt_once: Callable[[_Client, Any, float], Awaitable[_T | _Failure]],
    ) -> tuple[_T, int, float]:
        """Attempts on one client until one succeeds or ``_GaveUp`` (raised).

        ``attempt_once(client, prompt, remaining)`` returns the result or a ``_Failure``;
        returns the result, its attempt number and when that attempt started. Shared by calls
        and streams (whose attempt waits for the first chunk).
        """
        client = self._by_id[model_id]
        previous_delay: float | None = None
        last_kind = ErrorKind.UNKNOWN
        for attempt in itertools.count(1):
            stop = self._stop_reason(call)
            if stop is not None:
                raise _GaveUp(_stop_kind(stop, last_kind), f"{stop} reached", stop)
            remaining = call.deadline - self._clock()
            call.attempts += 1
            self._emit(
                AttemptStarted(
                    at=self._now(), call_id=call.call_id, model_id=model_id, attempt=attempt
                )
            )
            started = self._clock()
            result = await attempt_once(client, call.prompt, remaining)
            if not isinstance(result, _Failure):
                return result, attempt, started
            delay = self._after_failure(call, model_id, attempt, started, result, previous_delay)
            last_kind = result.kind
            await self._sleep(delay)
            previous_delay = delay
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt_succeeded(self, call: _Call, model_id: str, attempt: int, started: float) -> None:
        self._emit(
            AttemptSucceeded(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=attempt,
                latency=self._clock() - started,
            )
        )
        if self._health.states[model_id].state in (HealthState.DEGRADED, HealthState.UNHEALTHY):
            self._change_state(model_id, "recover", "a call succeeded")

    def _stop_reason(self, call: _Call) -> str | None:
        """Why the call must end now, before its next attempt, or None."""
        cap = self.retry_policy.max_total_attempts
        if cap is not None and call.attempts >= cap:
            return "max_total_attempts"
        if call.deadline - self._clock() <= 0:
            return "deadline"
        return None

    def _attempt_failed(
        self,
        call: _Call,
        model_id: str,
        attempt: int,
        started: float,
        kind: ErrorKind,
        message: str,
        final: bool,
    ) -> None:
        """Record a failed attempt: in the call's records and as ``attempt_failed``."""
        call.records.append(
            AttemptRecord(model_id=model_id, attempt=attempt, error_kind=kind, message=message)
        )
        self._emit(
            AttemptFailed(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=attempt,
                latency=self._clock() - started,
                error_kind=kind,
                message=message,
                final=final,
                counts=kind.counts_against_health,
            )
        )

    def _attempt_limit(self, remaining: float) -> tuple[float, bool]:
        """How long the next attempt may take, and whether ``attempt_timeout`` is the bound."""
        attempt_timeout = self.retry_policy.attempt_timeout
        if attempt_timeout is not None and attempt_timeout < remaining:
            return attempt_timeout, True
        return remaining, False

    async def _attempt(self, client: _Client, prompt: Any, remaining: float) -> Any:
        """One attempt, bounded by ``attempt_timeout`` and the call's remaining budget.

        Returns the response, or a ``_Failure``. On asyncio the loop's own ``asyncio.timeout``
        bounds it: it costs a fraction of an anyio cancel scope, and this is the hottest path
        of all. A ``TimeoutError`` the client raises itself is the client's failure: only the
        expiry of our own timer is a timeout of ours.
        """
        limit, by_attempt = self._attempt_limit(remaining)
        # An async client is awaited directly: no wrapper coroutine on the hot path.
        call = client.client.call if client.call_is_async else client.call
        try:
            if _on_asyncio():
                timer = asyncio.timeout(limit)
                try:
                    async with timer:
                        return await call(prompt)
                except TimeoutError:
                    if not timer.expired():
                        raise
            else:
                with anyio.move_on_after(limit):
                    return await call(prompt)
        except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
            return _failure(exc, prompt)
        return _timed_out(limit, by_attempt, "attempt timed out after")

    def _after_failure(
        self,
        call: _Call,
        model_id: str,
        attempt: int,
        started: float,
        failure: _Failure,
        previous_delay: float | None,
    ) -> float:
        """Record a failed attempt; return the backoff delay, or raise ``_GaveUp``."""
        kind = failure.kind
        delay = self._retry_delay(call, model_id, attempt, failure, previous_delay)
        self._attempt_failed(call, model_id, attempt, started, kind, failure.message, delay is None)
        logger.info(
            "attempt {} on {} failed: {}",
            attempt,
            model_id,
            failure.message,
            call_id=call.call_id,
            model_id=model_id,
            error_kind=kind.value,
        )
        if delay is None:
            self._gave_up_on(model_id, kind, failure.message)
            stop = None
            if kind is ErrorKind.BAD_REQUEST:
                stop = ErrorKind.BAD_REQUEST.value
            elif kind is ErrorKind.DEADLINE:
                stop = "deadline"
            raise _GaveUp(kind, failure.message, stop)
        self._emit(
            Backoff(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=attempt,
                delay=delay,
                retry_after=failure.retry_after,
            )
        )
        return delay

    def _retry_delay(
        self,
        call: _Call,
        model_id: str,
        attempt: int,
        failure: _Failure,
        previous_delay: float | None,
    ) -> float | None:
        """The wait before retrying the same client, or None to give up on it."""
        policy = self.retry_policy
        if not failure.kind.retryable or attempt >= policy.max_attempts:
            return None
        if policy.max_total_attempts is not None and call.attempts >= policy.max_total_attempts:
            return None
        delay = backoff_delay(policy, attempt, self._rng, previous_delay)
        if failure.kind is ErrorKind.RATE_LIMITED and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        # A wait that would run past the deadline is pointless: move on now instead.
        if self._clock() + delay >= call.deadline:
            return None
        if not self._budget.try_retry():
            self._emit(
                RetryBudgetExhausted(at=self._now(), call_id=call.call_id, model_id=model_id)
            )
            logger.warning(
                "retry budget exhausted; failing over from {} instead of retrying",
                model_id,
                model_id=model_id,
            )
            return None
        return delay

    def _gave_up_on(self, model_id: str, kind: ErrorKind, message: str) -> None:
        """Let the health machine judge a client the call has given up on."""
        if kind is ErrorKind.AUTH:
            self._change_state(model_id, "fail", f"auth error: {message}")
            return
        if not kind.counts_against_health:
            return
        streak = self._health.state_of(model_id).streak
        policy = self.health_policy
        if streak >= policy.unhealthy_after:
            self._change_state(model_id, "fail", f"{streak} failed call(s) in a row")
        elif streak >= policy.degraded_after:
            self._change_state(model_id, "degrade", f"{streak} failed call(s) in a row")

    # -- health --------------------------------------------------------------------------

    async def check_health(self) -> dict[str, HealthState]:
        """Probe every client not in maintenance now; returns the states afterwards."""
        await self._try_follow()
        async with anyio.create_task_group() as group:
            for model_id in self._by_id:
                if self._health.state_of(model_id).state is not HealthState.MAINTENANCE:
                    group.start_soon(self._probe, model_id)
        return self.states

    async def _probe(self, model_id: str) -> None:
        client = self._by_id[model_id]
        started = self._clock()
        kind: ErrorKind | None = None
        message = ""
        ok = False
        try:
            with anyio.move_on_after(self.health_policy.probe_timeout) as scope:
                ok = await client.health_check()
            if scope.cancelled_caught:
                kind = ErrorKind.TIMEOUT
                message = f"probe timed out after {self.health_policy.probe_timeout:g}s"
            elif not ok:
                message = "health_check() returned False"
        except ModelError as exc:
            kind, message = exc.kind, exc.message
        except Exception as exc:  # noqa: BLE001 - any probe failure marks the client unhealthy
            kind, message = ErrorKind.UNKNOWN, describe_exception(exc)
        if self._closed:
            return
        self._emit(
            HealthProbe(
                at=self._now(),
                model_id=model_id,
                ok=ok,
                latency=self._clock() - started,
                error_kind=kind,
                message=message,
            )
        )
        state = self._health.state_of(model_id).state
        if not ok:
            self._change_state(model_id, "fail", f"probe failed: {message}")
        elif state in (HealthState.DEGRADED, HealthState.UNHEALTHY):
            self._change_state(model_id, "recover", "probe succeeded")

    async def follow(self) -> int:
        """Fold in events that other processes appended to the shared log; returns how many."""
        events, cursor = await anyio.to_thread.run_sync(self.event_store.read_others, self._cursor)
        folded = self._fold_others(events)
        self._cursor = max(self._cursor, cursor)
        if folded:
            self._plan_cache = None
            self._sync_machines()
        return folded

    async def _try_follow(self) -> None:
        """``follow()``, where a log that cannot be read leaves health local for a while.

        Probes and calls go on from this engine's own view; the outage is logged once, and
        its end once, however often the loops try.
        """
        try:
            await self.follow()
        except Exception as exc:  # noqa: BLE001 - the log being away must not stop health
            if not self._follow_failing:
                logger.error(
                    "cannot read the shared event log ({}); health is local until it is back",
                    describe_exception(exc),
                )
            self._follow_failing = True
        else:
            if self._follow_failing:
                logger.warning("the shared event log is readable again")
            self._follow_failing = False

    async def _follow_loop(self, interval: float) -> None:
        """Fold in the other replicas' events every ``interval`` seconds (a shared log)."""
        while True:
            await self._try_follow()
            await anyio.sleep(interval)

    async def _health_loop(self) -> None:
        interval = self.health_check_interval
        next_round = anyio.current_time()
        while True:
            try:
                await self.check_health()
            except Exception as exc:  # noqa: BLE001 - a broken round must not end the loop
                logger.opt(exception=False).error(
                    "health check round failed: {}", describe_exception(exc)
                )
            # Keep the schedule: a slow round shortens the next wait instead of shifting it.
            next_round += interval
            now = anyio.current_time()
            if next_round < now:
                next_round = now + interval
            await anyio.sleep(next_round - now)

    # -- operator actions ----------------------------------------------------------------

    async def set_maintenance(
        self, model_id: str, on: bool, *, reason: str = "", by: str = "api"
    ) -> None:
        """Take ``model_id`` out of rotation (``on=True``) or put it back (``on=False``)."""
        if model_id not in self._by_id:
            known = ", ".join(self._by_id)
            raise ValueError(f"unknown model id {model_id!r} (known: {known})")
        if self._closed:
            raise RuntimeError("this MultiModelFailover is closed")
        self._emit(Maintenance(at=self._now(), model_id=model_id, on=on, reason=reason, by=by))
        self._machines[model_id].sync(self._health.state_of(model_id).state)
        logger.warning(
            "model {} maintenance {}: {}",
            model_id,
            "on" if on else "off",
            reason,
            model_id=model_id,
            by=by,
        )
        await self.event_store.wait_committed(self._ticket)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("this MultiModelFailover is closed")
        if self._task_group is not None:
            raise RuntimeError("this MultiModelFailover is already running")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._task_group = group
        self._loop_scope = anyio.CancelScope()
        group.start_soon(self._run_health_loop, self._loop_scope)
        return self

    async def _run_health_loop(self, scope: anyio.CancelScope) -> None:
        # Its own scope: aclose() stops the loops without cancelling the caller's block.
        with scope:
            if self.follow_interval is None:
                await self._health_loop()
                return
            async with anyio.create_task_group() as loops:
                loops.start_soon(self._follow_loop, self.follow_interval)
                await self._health_loop()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group, self._task_group = self._task_group, None
        handled: bool | None = None
        if group is not None and self._loop_scope is not None:
            self._loop_scope.cancel()
            handled = await group.__aexit__(exc_type, exc, tb)
        await self.aclose()
        return handled

    async def aclose(self) -> None:
        """Stop the health loop, record ``engine_stopped``, flush and close the store."""
        if self._loop_scope is not None:
            self._loop_scope.cancel()
        if self._closed:
            return
        self._closed = True
        try:
            self._emit(EngineStopped(at=self._now()))
        finally:
            with anyio.CancelScope(shield=True):
                await self.event_store.aclose()

    def stream(self, prompt: Any, *, timeout: float | None = None) -> AsyncGenerator[str, None]:
        """Stream the answer as text chunks; failover only until the first chunk arrives.

        After it, a failure raises ``StreamInterruptedError`` (see ``core.streaming``).
        """
        from .streaming import stream_with_failover  # noqa: PLC0415 - streaming imports this module

        return stream_with_failover(self, prompt, timeout=timeout)

    def events(self) -> Iterator[Event]:
        """The stored events, oldest first (a shortcut for ``event_store.read()``)."""
        return self.event_store.read()


# The events after which the rotation must be worked out again.
_CHANGES_ROTATION: frozenset[type[Event]] = frozenset({StateChanged, Maintenance, EngineStarted})


def _stop_kind(stop: str, last_kind: ErrorKind) -> ErrorKind:
    return ErrorKind.DEADLINE if stop == "deadline" else last_kind


__all__ = ["CallOutcome", "FailoverEngine"]
