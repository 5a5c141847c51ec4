"""Metrics of a replayed log in the Prometheus text format, through ``prometheus_client``.

The names are stable (dashboards and alerts depend on them); counters end in ``_total``:

- ``failover_calls_total``: calls started.
- ``failover_calls_finished_total{outcome}``: calls ended, ``succeeded``/``failed``/``cancelled``.
- ``failover_attempts_total{model}``, ``failover_attempt_successes_total{model}``,
  ``failover_attempt_failures_total{model}``: attempts on each model and how they ended.
- ``failover_calls_served_total{model}``: calls each model answered.
- ``failover_input_tokens_total{model}``, ``failover_output_tokens_total{model}``: tokens the
  clients reported (for successful attempts, and for failed ones whose provider reported
  usage); 0 for a model that reported none.
- ``failover_cost_usd_total{model}``: what those tokens cost in USD, only for the models whose
  cost is known (they have a price and reported usage).
- ``failover_attempt_errors_total{kind}``: failed attempts by error kind.
- ``failover_retries_total``, ``failover_failovers_total``, ``failover_backoffs_total``,
  ``failover_backoff_seconds_total``, ``failover_retry_budget_exhausted_total``,
  ``failover_health_probes_total``, ``failover_health_probe_failures_total``,
  ``failover_state_changes_total``.
- ``failover_attempt_latency_seconds{model}``: histogram of successful attempts' latency, with
  the bounds of ``core.projections.LATENCY_BUCKETS``.
- ``failover_model_state{model,state}``: 1 for the state each model is in, 0 for the others.
- ``failover_log_events``: events folded; ``failover_log_last_event_timestamp_seconds``: the
  wall-clock time of the last one (Unix seconds).

A running engine (``LiveCollector``, ``MultiModelFailover.prometheus_text()``) adds the health
of its own event log, which no replay can show:

- ``failover_event_log_errors_total``: failed writes to the log (each batch is kept and
  retried; the model calls went on). Alert on any increase.
- ``failover_event_log_dropped_total``: events the log could not keep (its buffer was full,
  or it was still unwritable at close).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..core.health import HealthState
from ..core.projections import LATENCY_BUCKETS, Metrics, Snapshot


class LiveSource(Protocol):
    """What live exposition reads: an engine, or the facade around one."""

    def snapshot(self) -> Snapshot:
        """A copy of the live projection."""

    def log_status(self) -> dict[str, Any]:
        """The event log's own health."""


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``, ``60.0``)."""
    return repr(float(bound))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _totals(m: Metrics) -> Iterator[Metric]:
    yield _counter("failover_calls", "Calls started.", m.calls)
    finished = CounterMetricFamily(
        "failover_calls_finished", "Calls ended, by outcome.", labels=["outcome"]
    )
    finished.add_metric(["succeeded"], m.calls_succeeded)
    finished.add_metric(["failed"], m.calls_failed)
    finished.add_metric(["cancelled"], m.calls_cancelled)
    yield finished
    yield _counter("failover_retries", "Attempts after the first on the same model.", m.retries)
    yield _counter("failover_failovers", "Moves from one model to the next in a call.", m.failovers)
    yield _counter("failover_backoffs", "Backoff waits between attempts.", m.backoffs)
    yield _counter("failover_backoff_seconds", "Seconds spent in backoff.", m.backoff_seconds)
    yield _counter(
        "failover_retry_budget_exhausted",
        "Retries refused by the retry budget.",
        m.retry_budget_exhausted,
    )
    yield _counter("failover_health_probes", "Health probes run.", m.probes)
    yield _counter("failover_health_probe_failures", "Health probes failed.", m.probe_failures)
    yield _counter("failover_state_changes", "Health state changes.", m.state_changes)
    errors = CounterMetricFamily(
        "failover_attempt_errors", "Failed attempts by error kind.", labels=["kind"]
    )
    for kind, count in sorted(m.failures_by_kind.items()):
        errors.add_metric([kind], count)
    yield errors


def _per_model(m: Metrics) -> Iterator[Metric]:
    families = {
        "attempts": CounterMetricFamily(
            "failover_attempts", "Attempts per model.", labels=["model"]
        ),
        "successes": CounterMetricFamily(
            "failover_attempt_successes", "Successful attempts per model.", labels=["model"]
        ),
        "failures": CounterMetricFamily(
            "failover_attempt_failures", "Failed attempts per model.", labels=["model"]
        ),
        "calls_served": CounterMetricFamily(
            "failover_calls_served", "Calls each model answered.", labels=["model"]
        ),
        "input_tokens": CounterMetricFamily(
            "failover_input_tokens", "Input tokens the clients reported.", labels=["model"]
        ),
        "output_tokens": CounterMetricFamily(
            "failover_output_tokens", "Output tokens the clients reported.", labels=["model"]
        ),
    }
    # A model without a price has no cost series at all: a 0 would read as "free".
    cost = CounterMetricFamily(
        "failover_cost_usd", "Cost of the reported tokens, USD (priced models).", labels=["model"]
    )
    latency = HistogramMetricFamily(
        "failover_attempt_latency_seconds",
        "Latency of successful attempts, seconds.",
        labels=["model"],
    )
    bounds = [_le(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    for model_id, figures in sorted(m.by_model.items()):
        for field, family in families.items():
            family.add_metric([model_id], getattr(figures, field))
        if figures.cost is not None:
            cost.add_metric([model_id], figures.cost)
        cumulative = list(accumulate(figures.latency_buckets))
        latency.add_metric(
            [model_id],
            list(zip(bounds, [float(c) for c in cumulative], strict=True)),
            figures.latency_sum,
        )
    yield from families.values()
    yield cost
    yield latency


def _states(snapshot: Snapshot) -> Iterator[Metric]:
    gauge = GaugeMetricFamily(
        "failover_model_state",
        "1 for the health state each model is in, 0 for the others.",
        labels=["model", "state"],
    )
    for model_id, state in sorted(snapshot.states.items()):
        for candidate in HealthState:
            gauge.add_metric([model_id, candidate.value], 1.0 if state.state is candidate else 0.0)
    yield gauge
    yield GaugeMetricFamily("failover_log_events", "Events folded.", value=snapshot.events)
    if snapshot.last_at is not None:
        yield GaugeMetricFamily(
            "failover_log_last_event_timestamp_seconds",
            "Wall-clock time of the last event folded, Unix seconds.",
            value=snapshot.last_at.timestamp(),
        )


class SnapshotCollector(Collector):
    """A ``prometheus_client`` collector over one replayed ``Snapshot``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the snapshot."""
        yield from _totals(self.snapshot.metrics)
        yield from _per_model(self.snapshot.metrics)
        yield from _states(self.snapshot)


def _log_health(status: Mapping[str, Any]) -> Iterator[Metric]:
    yield _counter(
        "failover_event_log_errors",
        "Failed writes to the event log (kept and retried; model calls go on).",
        status["errors"],
    )
    yield _counter(
        "failover_event_log_dropped",
        "Events the event log could not keep (buffer full, or unwritable at close).",
        status["dropped"],
    )


class LiveCollector(Collector):
    """A ``prometheus_client`` collector over a running engine: its live snapshot and the
    health of its event log. Register it with your registry to serve ``/metrics``."""

    def __init__(self, engine: LiveSource) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the live snapshot, then the log's own health."""
        yield from SnapshotCollector(self.engine.snapshot()).collect()
        yield from _log_health(self.engine.log_status())


def _exposition(collector: Collector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def prometheus_text(snapshot: Snapshot) -> str:
    """The snapshot's metrics in the Prometheus text exposition format."""
    return _exposition(SnapshotCollector(snapshot))


def live_prometheus_text(engine: LiveSource) -> str:
    """A running engine's metrics, its event log's health included, in the text format."""
    return _exposition(LiveCollector(engine))
