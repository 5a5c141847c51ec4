"""The ledger of calls: each call's life in the log, and the calls in flight.

Every call records ``call_started``, its attempts, backoffs and failovers, and exactly one
terminal event (``call_succeeded``, ``call_failed`` or ``call_cancelled``), whichever way it
ends: the terminal event is what its caller saw. Calls in flight are known, so that closing
the engine can wait for them and cut them short.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import anyio
from loguru import logger

from .calls import Call, CallOutcome, EngineClosedError, FailReason, Failure, GaveUp
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
    Failover,
)
from .livelog import LiveLog, WallClock
from .pricing import NO_TOKENS, Price, Tokens, tokens_of
from .protocols import Clock

Fingerprint = Callable[[Any], tuple[int, str]]
_N = TypeVar("_N", int, float)


class CallLedger:
    """Records calls in the live log; see the module docstring."""

    def __init__(
        self,
        log: LiveLog,
        *,
        clock: Clock,
        now: WallClock,
        fingerprint: Fingerprint | None,
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self._log = log
        self._prices = dict(prices or {})
        self._clock = clock
        self._now = now
        self._fingerprint = fingerprint
        self.in_flight: set[Call] = set()
        self.closing = False  # no new calls: the engine is closing
        self.on_idle: Callable[[], None] = lambda: None  # the last call in flight ended
        # A call that held trial slots ended: they are free again (``HealthMonitor``).
        self.on_trials_end: Callable[[tuple[str, ...]], None] = lambda _: None

    def now(self) -> datetime:
        """The wall-clock time stamped on events."""
        return self._now()

    # -- the start and the steps ---------------------------------------------------------

    def started(
        self,
        call: Call,
        order: tuple[str, ...],
        last_resort: bool,
        timeout: float | None = None,
        stream: str | None = None,
    ) -> None:
        """Record ``call_started`` (with the caller's own ``timeout``, and a stream's
        recovery); the call is in flight."""
        if self.closing:
            raise EngineClosedError("this MultiModelFailover is closed")
        at = self._now()  # stamped before the prompt is hashed, as close to the start as can be
        chars: int | None = None
        digest: str | None = None
        if self._fingerprint is not None:
            chars, digest = self._fingerprint(call.prompt)
        event = CallStarted(
            at=at,
            call_id=call.call_id,
            order=order,
            last_resort=last_resort,
            prompt_chars=chars,
            prompt_hash=digest,
            timeout=timeout,
            stream=stream,
        )
        self._log.emit(event)
        self.in_flight.add(call)

    def attempt_started(self, call: Call, model_id: str, attempt: int, trial: bool) -> None:
        """Record ``attempt_started``."""
        self._log.emit(
            AttemptStarted(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=attempt,
                trial=trial,
            )
        )

    def attempt_succeeded(
        self, call: Call, model_id: str, skipped: int = 0, tokens: Tokens = NO_TOKENS
    ) -> None:
        """Record ``attempt_succeeded`` for the call's current attempt, with the ``tokens``
        (input, output) its answer reported and their cost."""
        cost = self._spend(call, model_id, tokens)
        self._log.emit(
            AttemptSucceeded(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=call.attempt,
                latency=self._clock() - call.attempt_started,
                skipped=skipped,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cost=cost,
            )
        )

    def _spend(self, call: Call, model_id: str, tokens: Tokens) -> float | None:
        """The cost of ``tokens`` on ``model_id``, added with them to what ``call`` spent."""
        if tokens[0] is None and tokens[1] is None:
            return None
        price = self._prices.get(model_id)
        cost = None if price is None else price.cost(tokens)
        spent_in, spent_out, spent_cost = call.spent
        call.spent = (
            _plus(spent_in, tokens[0]),
            _plus(spent_out, tokens[1]),
            _plus(spent_cost, cost),
        )
        return cost

    def attempt_failed(
        self,
        call: Call,
        model_id: str,
        failure: Failure,
        final: bool,
        skipped: int = 0,
        chunks: int | None = None,
    ) -> None:
        """Record the call's current attempt as failed: in its records and as
        ``attempt_failed``."""
        kind = failure.kind
        call.records.append(
            AttemptRecord(
                model_id=model_id,
                attempt=call.attempt,
                error_kind=kind,
                message=failure.message,
                error=failure.error,
            )
        )
        usage = failure.usage  # what a stream had reported before it broke
        if failure.error is not None:
            call.last_error = failure.error
            if isinstance(failure.error, ModelError) and failure.error.usage is not None:
                usage = failure.error.usage  # the provider's own account of the failure
        tokens = tokens_of(usage)  # billed only when reported
        cost = self._spend(call, model_id, tokens)
        self._log.emit(
            AttemptFailed(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=call.attempt,
                latency=self._clock() - call.attempt_started,
                error_kind=kind,
                message=failure.message,
                final=final,
                counts=kind.counts_against_health,
                skipped=skipped,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cost=cost,
                retry_after=failure.retry_after,
                chunks=chunks,
            )
        )

    def backoff(self, call: Call, model_id: str, delay: float, retry_after: float | None) -> None:
        """Record the wait before the next attempt on ``model_id``."""
        self._log.emit(
            Backoff(
                at=self._now(),
                call_id=call.call_id,
                model_id=model_id,
                attempt=call.attempt,
                delay=delay,
                retry_after=retry_after,
            )
        )

    def failover(self, call: Call, to_model: str, reason: ErrorKind) -> None:
        """Record (and log at WARNING) the move to the next client."""
        from_model = call.model_id or ""
        call.failovers += 1
        self._log.emit(
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

    # -- the end -------------------------------------------------------------------------

    def succeeded(self, call: Call, model_id: str, response: Any) -> CallOutcome:
        """Record ``call_succeeded``; the outcome to return."""
        latency = self._clock() - call.start
        try:
            self._log.emit(
                CallSucceeded(
                    at=self._now(),
                    call_id=call.call_id,
                    model_id=model_id,
                    attempts=call.attempts,
                    failovers=call.failovers,
                    latency=latency,
                )
            )
        finally:
            self._end(call)
        input_tokens, output_tokens, cost = call.spent
        return CallOutcome(
            response=response,
            model_id=model_id,
            call_id=call.call_id,
            attempts=call.attempts,
            failovers=call.failovers,
            latency=latency,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
        )

    def failed(
        self, call: Call, last: GaveUp, exhausted: FailReason = FailReason.EXHAUSTED
    ) -> ModelError:
        """Record ``call_failed``; the error to raise, the last client error as its cause.
        ``exhausted`` is the reason when no stop ended the call early."""
        reason = last.stop or exhausted
        self.record_failed(call, reason, last.kind)
        if reason in (FailReason.BAD_REQUEST, FailReason.FAIL_FAST):
            if isinstance(last.error, ModelError):
                if last.error.model_id is None:
                    last.error.model_id = call.model_id
                return last.error  # the client's own error, as it raised it (scrubbed)
            error = ModelError(last.message, kind=last.kind, model_id=call.model_id)
            error.__cause__ = last.error
            return error
        error_type = (
            DeadlineExceededError if reason is FailReason.DEADLINE else AllModelsFailedError
        )
        error = error_type(
            f"call {call.call_id} failed: {_what_happened(call, reason)}",
            attempts=call.records,
            call_id=call.call_id,
            kind=last.kind,
        )
        error.__cause__ = call.last_error
        return error

    def record_failed(self, call: Call, reason: FailReason, kind: ErrorKind) -> None:
        """Record ``call_failed`` (the call's terminal event)."""
        try:
            self._log.emit(
                CallFailed(
                    at=self._now(),
                    call_id=call.call_id,
                    reason=reason,
                    error_kind=kind,
                    attempts=call.attempts,
                    failovers=call.failovers,
                    latency=self._clock() - call.start,
                )
            )
        finally:
            self._end(call)

    def cancelled(self, call: Call, reason: str = "") -> None:
        """Record that ``call`` ended without an outcome for its caller, unless its end is
        recorded already."""
        if call.ended:
            return
        try:
            self._record_cancelled(call, reason)
        finally:
            self._end(call)

    def _record_cancelled(self, call: Call, reason: str, supersedes: str | None = None) -> None:
        self._log.emit(
            CallCancelled(
                at=self._now(),
                call_id=call.call_id,
                model_id=call.model_id,
                attempts=call.attempts,
                latency=self._clock() - call.start,
                reason=reason,
                supersedes=supersedes,
            )
        )

    async def commit(self, call: Call, outcome: str) -> None:
        """Wait for the commit of ``call``'s ``outcome`` (its terminal event's type). A caller
        cancelled meanwhile never sees that outcome: the cancellation is recorded after it, and
        is the call's outcome."""
        try:
            await self._log.commit()
        except anyio.get_cancelled_exc_class():
            self._record_cancelled(call, "cancelled while its outcome was committed", outcome)
            raise

    def closed_during(self, call: Call) -> EngineClosedError:
        """Record that the engine closed while ``call`` was in flight; the error to raise."""
        self.cancelled(call, "engine_closed")
        return EngineClosedError(f"call {call.call_id}: the engine closed while it was in flight")

    def release_trials(self, call: Call) -> None:
        """Free the trial slots ``call`` holds (once: at its end, a stream's included)."""
        if call.trial_slots:
            slots, call.trial_slots = call.trial_slots, ()
            self.on_trials_end(slots)

    def _end(self, call: Call) -> None:
        call.ended = True
        self.release_trials(call)
        self.in_flight.discard(call)
        if self.closing and not self.in_flight:
            self.on_idle()


def _plus(total: _N | None, more: _N | None) -> _N | None:
    """``total`` plus ``more``, where None is "not reported" (not zero) unless one was."""
    if more is None:
        return total
    return more if total is None else total + more


def _what_happened(call: Call, reason: FailReason) -> str:
    """Why the call failed, in the caller's words, with each attempt's outcome."""
    tried = "; ".join(f"{r.model_id}#{r.attempt} {r.error_kind.value}" for r in call.records)
    attempts = f"{call.attempts} attempt(s): {tried}" if tried else f"{call.attempts} attempt(s)"
    match reason:
        case FailReason.NO_CLIENTS:
            return "no model could be tried: every model is in maintenance"
        case FailReason.DEADLINE:
            budget = call.deadline - call.start
            return f"its deadline ({budget:g}s) ran out after {attempts}"
        case FailReason.MAX_TOTAL_ATTEMPTS:
            return f"it reached the policy's max_total_attempts after {attempts}"
        case _:
            return f"every model it tried failed ({attempts})"
