"""What one side of a what-if did (the recorded run, or a replay): figures, calls, timeline.

``Tally`` reads one side's events in order. It counts over the calls of the window (those that
started in it, wherever their events fall) and the other events stamped in it, the way the
log's own fold (``projections.apply``) counts them (a test holds the two equal; counting here
keeps a day's log within its time budget). Call latencies are kept whole for exact
percentiles; tokens and cost come from each attempt's own usage (``usage``). Health states are
the fold's, over the whole run, so the window starts from the states it inherits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec

from ..events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    RetryBudgetExhausted,
    StateChanged,
)
from ..health import HealthState
from ..projections import Snapshot, apply

# (input tokens, output tokens, cost in USD); None where unknown.
Usage = tuple[int | None, int | None, float | None]
NO_USAGE: Final[Usage] = (None, None, None)
UsageOf = Callable[[AttemptSucceeded | AttemptFailed], Usage]


def usage_of_event(event: AttemptSucceeded | AttemptFailed) -> Usage:
    """An attempt's usage as its event recorded it (older logs record none)."""
    return (
        getattr(event, "input_tokens", None),
        getattr(event, "output_tokens", None),
        getattr(event, "cost", None),
    )


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Call latency in seconds over the calls that ended with an outcome (None: no call)."""

    p50: float | None = None
    p95: float | None = None
    max: float | None = None


class ModelFigures(msgspec.Struct, kw_only=True):
    """One model's share: the load it got (attempts) and what came of it."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    calls_served: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


class Side(msgspec.Struct, kw_only=True):
    """The figures of one side over the window's calls."""

    calls: int = 0
    calls_succeeded: int = 0
    calls_failed: int = 0
    calls_cancelled: int = 0
    attempts: int = 0
    attempt_failures: int = 0
    retries: int = 0
    failovers: int = 0
    backoffs: int = 0
    backoff_seconds: float = 0.0
    retry_budget_exhausted: int = 0
    probes: int = 0
    probe_failures: int = 0
    state_changes: int = 0
    latency: Latency = msgspec.field(default_factory=Latency)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    by_model: dict[str, ModelFigures] = {}


class CallResult:
    """How one call of the window ended, and the trail of its attempts."""

    __slots__ = ("at", "attempts", "failovers", "kind", "latency", "model", "status", "trail")

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.status = "open"  # succeeded | failed | cancelled | open (the log ends first)
        self.model: str | None = None  # served by, or the reason it failed
        self.kind: str | None = None
        self.attempts = 0
        self.failovers = 0
        self.latency: float | None = None
        self.trail: list[str] = []  # "model#n:ok" / "model#n:server" / "model#n" (no end)

    def outcome(self) -> str:
        """The outcome in words: ``served by X``, ``failed (reason, kind)``, ``cancelled``."""
        if self.status == "succeeded":
            return f"served by {self.model}"
        if self.status == "failed":
            return f"failed ({self.model}, {self.kind})"
        return "cancelled" if self.status == "cancelled" else "no outcome (the log ends)"

    def describe(self) -> str:
        """The outcome and the attempts, for a calibration mismatch."""
        trail = ", ".join(self.trail) or "no attempt"
        return (
            f"{self.outcome()} after {self.attempts} attempt(s), {self.failovers} "
            f"failover(s): {trail}"
        )

    def key(self) -> tuple[object, ...]:
        """What calibration compares. A call the log leaves open and a replayed call cut at
        the same moment (cancelled) both have no outcome."""
        status = "none" if self.status in ("open", "cancelled") else self.status
        return (status, self.model, self.kind, self.attempts, self.failovers, self.trail)


class Timeline(msgspec.Struct, kw_only=True):
    """What the HTML report draws for one side: states over the window, failovers, actions."""

    initial: dict[str, HealthState] = {}
    changes: dict[str, list[tuple[datetime, HealthState]]] = {}
    failovers: list[Failover] = []
    maintenance: list[Maintenance] = []


class Tally:
    """Reads one side's events in order; see the module docstring.

    ``covered``: the window's call ids. When ``decide`` is true this tally fills it itself
    (a call is the window's when its ``call_started`` is stamped in the window).
    """

    def __init__(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        covered: set[str],
        decide: bool,
        usage: UsageOf = usage_of_event,
        initial: Snapshot | None = None,
    ) -> None:
        self.since = since
        self.until = until
        self.covered = covered
        self._decide = decide
        self._usage = usage
        self.side = Side()
        # The states over the whole run (the log's fold of them), to know them at the window's
        # start and after.
        self.states = Snapshot(
            states={
                m: msgspec.structs.replace(s) for m, s in (initial or Snapshot()).states.items()
            }
        )
        self.timeline = Timeline()
        self._started = since is None
        if self._started:
            self._capture()
        self.calls: dict[str, CallResult] = {}
        self._latencies: list[float] = []
        self._models: dict[str, ModelFigures] = {}

    def _capture(self) -> None:
        self.timeline.initial = {m: s.state for m, s in self.states.states.items()}

    def _in_window(self, at: datetime) -> bool:
        if self.since is not None and at < self.since:
            return False
        return self.until is None or at <= self.until

    def _model(self, model_id: str) -> ModelFigures:
        found = self._models.get(model_id)
        if found is None:
            found = self._models[model_id] = ModelFigures()
        return found

    def add(self, event: Event) -> None:
        """Take in the next event of this side."""
        handler = _CALL_HANDLERS.get(type(event))
        if handler is not None:
            call_id: str = event.call_id  # type: ignore[union-attr]
            if call_id in self.covered:
                handler(self, event)
            elif self._decide and type(event) is CallStarted and self._in_window(event.at):
                self.covered.add(call_id)
                handler(self, event)
            if self._started:
                return
        if not self._started and event.at >= self.since:  # type: ignore[operator]
            self._started = True
            self._capture()
        other = _OTHER_HANDLERS.get(type(event))
        if other is not None:
            other(self, event)

    # -- the other events ----------------------------------------------------------------

    def _state_event(self, event: StateChanged | Maintenance | EngineStarted) -> None:
        before = self.states.metrics.state_changes
        apply(self.states, event)
        if isinstance(event, EngineStarted) or not self._in_window(event.at):
            return
        self.side.state_changes += self.states.metrics.state_changes - before
        model_id = event.model_id
        if isinstance(event, Maintenance):
            self.timeline.maintenance.append(event)
        state = self.states.state_of(model_id).state
        changes = self.timeline.changes.setdefault(model_id, [])
        if not changes or changes[-1][1] is not state:
            changes.append((event.at, state))

    def _probe(self, event: HealthProbe) -> None:
        if self._in_window(event.at):
            self.side.probes += 1
            if not event.ok:
                self.side.probe_failures += 1

    # -- per call ------------------------------------------------------------------------

    def _call_started(self, event: CallStarted) -> None:
        self.side.calls += 1
        self.calls[event.call_id] = CallResult(event.at)

    def _attempt_started(self, event: AttemptStarted) -> None:
        side = self.side
        side.attempts += 1
        if event.attempt > 1:
            side.retries += 1
        self._model(event.model_id).attempts += 1
        result = self.calls[event.call_id]
        result.attempts += 1
        result.trail.append(f"{event.model_id}#{event.attempt}")

    def _attempt_succeeded(self, event: AttemptSucceeded) -> None:
        self._model(event.model_id).successes += 1
        self._ended(event, "ok")

    def _attempt_failed(self, event: AttemptFailed) -> None:
        self.side.attempt_failures += 1
        self._model(event.model_id).failures += 1
        self._ended(event, event.error_kind.value)

    def _ended(self, event: AttemptSucceeded | AttemptFailed, outcome: str) -> None:
        trail = self.calls[event.call_id].trail
        if trail:
            trail[-1] = f"{trail[-1]}:{outcome}"
        usage = self._usage(event)
        if usage != NO_USAGE:
            figures = self._model(event.model_id)
            tokens_in, tokens_out, cost = usage
            if tokens_in is not None:
                figures.input_tokens = (figures.input_tokens or 0) + tokens_in
            if tokens_out is not None:
                figures.output_tokens = (figures.output_tokens or 0) + tokens_out
            if cost is not None:
                figures.cost = (figures.cost or 0.0) + cost

    def _backoff(self, event: Backoff) -> None:
        self.side.backoffs += 1
        self.side.backoff_seconds += event.delay

    def _refused(self, event: RetryBudgetExhausted) -> None:
        self.side.retry_budget_exhausted += 1

    def _failover(self, event: Failover) -> None:
        self.side.failovers += 1
        self.calls[event.call_id].failovers += 1
        self.timeline.failovers.append(event)

    def _succeeded(self, event: CallSucceeded) -> None:
        self.side.calls_succeeded += 1
        self._model(event.model_id).calls_served += 1
        result = self.calls[event.call_id]
        result.status, result.model, result.latency = "succeeded", event.model_id, event.latency

    def _failed(self, event: CallFailed) -> None:
        self.side.calls_failed += 1
        result = self.calls[event.call_id]
        result.status, result.latency = "failed", event.latency
        result.model, result.kind = event.reason, event.error_kind.value

    def _cancelled(self, event: CallCancelled) -> None:
        side = self.side
        side.calls_cancelled += 1
        # The caller was cancelled while the outcome before this one was being committed.
        if event.supersedes == "call_succeeded":
            side.calls_succeeded -= 1
            if event.model_id is not None:
                self._model(event.model_id).calls_served -= 1
        elif event.supersedes == "call_failed":
            side.calls_failed -= 1
        result = self.calls[event.call_id]
        result.status, result.model, result.kind, result.latency = "cancelled", None, None, None

    # -- the figures ---------------------------------------------------------------------

    def figures(self) -> Side:
        """The figures of this side."""
        latencies = sorted(
            r.latency for r in self.calls.values() if r.latency is not None and r.status != "open"
        )
        totals: list[Any] = [None, None, None]
        for figures in self._models.values():
            for index, value in enumerate(
                (figures.input_tokens, figures.output_tokens, figures.cost)
            ):
                if value is not None:
                    totals[index] = value + (totals[index] or 0)
        return msgspec.structs.replace(
            self.side,
            latency=_latency(latencies),
            input_tokens=totals[0],
            output_tokens=totals[1],
            cost=totals[2],
            by_model=dict(sorted(self._models.items())),
        )


def _latency(ordered: list[float]) -> Latency:
    if not ordered:
        return Latency()
    return Latency(p50=_rank(ordered, 0.50), p95=_rank(ordered, 0.95), max=ordered[-1])


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of a sorted list."""
    index = math.ceil(round(q * len(ordered), 9)) - 1
    return ordered[min(max(index, 0), len(ordered) - 1)]


_CALL_HANDLERS: Final[dict[type[Any], Callable[[Tally, Any], None]]] = {
    CallStarted: Tally._call_started,
    AttemptStarted: Tally._attempt_started,
    AttemptSucceeded: Tally._attempt_succeeded,
    AttemptFailed: Tally._attempt_failed,
    Backoff: Tally._backoff,
    RetryBudgetExhausted: Tally._refused,
    Failover: Tally._failover,
    CallSucceeded: Tally._succeeded,
    CallFailed: Tally._failed,
    CallCancelled: Tally._cancelled,
}
_OTHER_HANDLERS: Final[dict[type[Any], Callable[[Tally, Any], None]]] = {
    StateChanged: Tally._state_event,
    Maintenance: Tally._state_event,
    EngineStarted: Tally._state_event,
    HealthProbe: Tally._probe,
}
