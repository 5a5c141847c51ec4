"""Projections: folds of the event log into metrics, per-model state and an audit trail.

``apply(snapshot, event)`` is the one fold. The engine calls it on every event it appends, and
``replay`` calls it on every stored event, so the live view and the replayed view cannot drift.
The fold is a pure function of the log in ``seq`` order: a ``state_changed`` whose premise
(``from_state``) does not hold at its place in the log has no effect, and only ``maintenance``
events move a model into or out of maintenance.
For speed the fold updates ``snapshot`` in place and returns it; it reads nothing but its two
arguments and never looks at ``seq``.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final

import msgspec

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
from .health import HealthState

# Upper bounds (seconds) of the latency histogram; the last bucket is everything above.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def _empty_buckets() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS) + 1)


class ModelMetrics(msgspec.Struct, kw_only=True):
    """Per-model counters; latency figures are over successful attempts, in seconds."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    calls_served: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_buckets: list[int] = msgspec.field(default_factory=_empty_buckets)
    # Usage the clients reported, and its cost in USD (None until a priced attempt).
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    @property
    def latency_mean(self) -> float | None:
        """Mean latency of successful attempts, or None before the first one."""
        return self.latency_sum / self.latency_count if self.latency_count else None

    def latency_quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (0..1) from the histogram buckets."""
        if not self.latency_count:
            return None
        rank = q * self.latency_count
        seen = 0
        for bound, count in zip(LATENCY_BUCKETS, self.latency_buckets, strict=False):
            seen += count
            if seen >= rank:
                return min(bound, self.latency_max)
        return self.latency_max


class Metrics(msgspec.Struct, kw_only=True):
    """Counters over the whole log; ``by_model`` holds the per-model figures."""

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
    failures_by_kind: dict[str, int] = {}
    by_model: dict[str, ModelMetrics] = {}
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    def model(self, model_id: str) -> ModelMetrics:
        """The figures of ``model_id``, created empty on first use."""
        found = self.by_model.get(model_id)
        if found is None:
            found = self.by_model[model_id] = ModelMetrics()
        return found


class ModelState(msgspec.Struct, kw_only=True):
    """One client's health: the state, since when, why, and its failure streak. ``by``: the
    operator whose maintenance action set the state ("" when the engine judged it)."""

    state: HealthState = HealthState.HEALTHY
    since: datetime | None = None
    reason: str = ""
    cause: str = ""
    streak: int = 0
    by: str = ""


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A state change or an operator action: what, when, why, by whom."""

    at: datetime
    model_id: str
    action: str
    from_state: HealthState
    to_state: HealthState
    reason: str = ""
    by: str = ""


# The audit trail a fold keeps: its last entries only, so that a snapshot (what an engine
# start loads, what the store keeps every so many events) does not grow with the log's age.
# ``failover audit`` lists every entry the log holds.
AUDIT_KEPT: Final = 1000


class Snapshot(msgspec.Struct, kw_only=True):
    """Everything the log says: metrics, per-model states, the audit trail (its last
    ``AUDIT_KEPT`` entries)."""

    metrics: Metrics = msgspec.field(default_factory=Metrics)
    states: dict[str, ModelState] = {}
    audit: list[AuditEntry] = []
    models: tuple[str, ...] = ()
    events: int = 0
    last_at: datetime | None = None

    def state_of(self, model_id: str) -> ModelState:
        """The state of ``model_id``, created healthy on first use."""
        found = self.states.get(model_id)
        if found is None:
            found = self.states[model_id] = ModelState()
        return found


def _latency(model: ModelMetrics, latency: float) -> None:
    model.latency_count += 1
    model.latency_sum += latency
    model.latency_max = max(model.latency_max, latency)
    # The first bucket whose upper bound is >= latency (the last one, +Inf, past them all).
    model.latency_buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1


def _set_state(snap: Snapshot, event: StateChanged | Maintenance, to: HealthState) -> None:
    state = snap.state_of(event.model_id)
    state.state, state.since, state.reason, state.cause = to, event.at, event.reason, event.type
    state.by = event.by if isinstance(event, Maintenance) else ""
    if to is HealthState.HEALTHY:
        state.streak = 0


def _audit(snap: Snapshot, entry: AuditEntry) -> None:
    trail = snap.audit
    trail.append(entry)
    if len(trail) > AUDIT_KEPT:
        del trail[0]  # rare (a state change), and a thousand pointers move in a microsecond


def _apply_attempt_failed(snap: Snapshot, event: AttemptFailed) -> None:
    m = snap.metrics
    m.attempt_failures += 1
    kind = event.error_kind.value
    m.failures_by_kind[kind] = m.failures_by_kind.get(kind, 0) + 1
    model = m.model(event.model_id)
    model.failures += 1
    if event.input_tokens is not None or event.output_tokens is not None:
        _spend(m, model, event)
    if event.final and event.counts:
        snap.state_of(event.model_id).streak += 1


def _apply_state_changed(snap: Snapshot, event: StateChanged) -> None:
    # A transition records its premise. In a shared log a replica may have judged from a view
    # that another writer's event (earlier in seq order) has since changed: such a transition
    # has no effect. Maintenance is an operator's: only maintenance events enter or leave it.
    if snap.state_of(event.model_id).state is not event.from_state or (
        HealthState.MAINTENANCE in (event.from_state, event.to_state)
    ):
        return
    snap.metrics.state_changes += 1
    _set_state(snap, event, event.to_state)
    _audit(
        snap,
        AuditEntry(
            at=event.at,
            model_id=event.model_id,
            action="state_changed",
            from_state=event.from_state,
            to_state=event.to_state,
            reason=event.reason,
        ),
    )


def _apply_maintenance(snap: Snapshot, event: Maintenance) -> None:
    current = snap.state_of(event.model_id).state
    if event.on:
        target = HealthState.MAINTENANCE
    elif current is HealthState.MAINTENANCE:
        target = HealthState.HEALTHY
    else:
        target = current
    if target is not current:
        snap.metrics.state_changes += 1
        _set_state(snap, event, target)
    _audit(
        snap,
        AuditEntry(
            at=event.at,
            model_id=event.model_id,
            action="maintenance_on" if event.on else "maintenance_off",
            from_state=current,
            to_state=target,
            reason=event.reason,
            by=event.by,
        ),
    )


def _attempt_started(snap: Snapshot, event: AttemptStarted) -> None:
    m = snap.metrics
    m.attempts += 1
    m.model(event.model_id).attempts += 1
    if event.attempt > 1:
        m.retries += 1


def _attempt_succeeded(snap: Snapshot, event: AttemptSucceeded) -> None:
    model = snap.metrics.model(event.model_id)
    model.successes += 1
    _latency(model, event.latency)
    if event.input_tokens is not None or event.output_tokens is not None:
        _spend(snap.metrics, model, event)
    snap.state_of(event.model_id).streak = 0


def _spend(totals: Metrics, model: ModelMetrics, event: AttemptSucceeded | AttemptFailed) -> None:
    """Count an attempt's reported usage and its cost, per model and in total."""
    for figures in (totals, model):
        figures.input_tokens += event.input_tokens or 0
        figures.output_tokens += event.output_tokens or 0
        if event.cost is not None:
            figures.cost = (figures.cost or 0.0) + event.cost


def _call_started(snap: Snapshot, event: CallStarted) -> None:
    snap.metrics.calls += 1


def _call_succeeded(snap: Snapshot, event: CallSucceeded) -> None:
    snap.metrics.calls_succeeded += 1
    snap.metrics.model(event.model_id).calls_served += 1


def _call_failed(snap: Snapshot, event: CallFailed) -> None:
    snap.metrics.calls_failed += 1


def _call_cancelled(snap: Snapshot, event: CallCancelled) -> None:
    m = snap.metrics
    m.calls_cancelled += 1
    # The caller was cancelled while the outcome before this event was being committed.
    if event.supersedes == "call_succeeded":
        m.calls_succeeded -= 1
        if event.model_id is not None:
            m.model(event.model_id).calls_served -= 1
    elif event.supersedes == "call_failed":
        m.calls_failed -= 1


def _backoff(snap: Snapshot, event: Backoff) -> None:
    snap.metrics.backoffs += 1
    snap.metrics.backoff_seconds += event.delay


def _failover(snap: Snapshot, event: Failover) -> None:
    snap.metrics.failovers += 1


def _retry_budget_exhausted(snap: Snapshot, event: RetryBudgetExhausted) -> None:
    snap.metrics.retry_budget_exhausted += 1


def _health_probe(snap: Snapshot, event: HealthProbe) -> None:
    snap.metrics.probes += 1
    if not event.ok:
        snap.metrics.probe_failures += 1


def _engine_started(snap: Snapshot, event: EngineStarted) -> None:
    snap.models = event.models
    for model_id in event.models:
        snap.state_of(model_id)


def _engine_stopped(snap: Snapshot, event: EngineStopped) -> None:
    pass


# One handler per event class: a dict lookup costs less than a chain of class patterns, and
# the fold runs on every event the engine appends.
_HANDLERS: Final[dict[type[Any], Callable[[Snapshot, Any], None]]] = {
    AttemptStarted: _attempt_started,
    AttemptSucceeded: _attempt_succeeded,
    AttemptFailed: _apply_attempt_failed,
    CallStarted: _call_started,
    CallSucceeded: _call_succeeded,
    CallFailed: _call_failed,
    CallCancelled: _call_cancelled,
    Backoff: _backoff,
    Failover: _failover,
    RetryBudgetExhausted: _retry_budget_exhausted,
    HealthProbe: _health_probe,
    StateChanged: _apply_state_changed,
    Maintenance: _apply_maintenance,
    EngineStarted: _engine_started,
    EngineStopped: _engine_stopped,
}


# The fold's version. Bump it whenever ``apply`` changes what it makes of the log (an event
# folded differently, a new handler, a counter counted another way): a snapshot is stored with
# ``FOLD_KEY`` and one written under another key is ignored, never trusted.
FOLD_VERSION: Final = 3


def fold_key(layout: type[Any] = Snapshot, *, version: int = FOLD_VERSION) -> str:
    """``version`` and a short hash of ``layout``'s structure (field names, types, defaults,
    enum values; not its docstrings) and of the latency buckets: the key a stored snapshot
    must carry to be trusted. A changed ``Snapshot`` changes it by itself."""
    shape = _structure(msgspec.json.schema(layout))
    digest = hashlib.sha256(msgspec.json.encode([shape, LATENCY_BUCKETS], order="sorted"))
    return f"{version}-{digest.hexdigest()[:12]}"


def _structure(schema: object) -> object:
    """A JSON schema less its prose (descriptions and titles)."""
    if isinstance(schema, dict):
        return {
            key: _structure(value)
            for key, value in schema.items()
            if key not in ("description", "title")
        }
    if isinstance(schema, list):
        return [_structure(value) for value in schema]
    return schema


# What a stored snapshot's ``fold`` must say (see ``storage.snapshots``).
FOLD_KEY: Final = fold_key()


def apply(snap: Snapshot, event: Event) -> Snapshot:
    """Fold one event into ``snap`` (in place) and return it."""
    snap.events += 1
    snap.last_at = event.at
    _HANDLERS[type(event)](snap, event)
    return snap


def fold(events: Iterable[Event], snapshot: Snapshot | None = None) -> Snapshot:
    """Fold ``events`` into ``snapshot`` (a fresh one by default)."""
    snap = Snapshot() if snapshot is None else snapshot
    for event in events:
        apply(snap, event)
    return snap
