"""Projections: the fold of the event log into metrics, states and the audit trail."""

from __future__ import annotations

import datetime
from pathlib import Path

import msgspec
import pytest

from devs.risks.multi_model_failover import (
    ErrorKind,
    HealthState,
    Metrics,
    ModelMetrics,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.core import events as ev
from devs.risks.multi_model_failover.core.projections import LATENCY_BUCKETS

from .fakes import FakeModelClient, engine, failing

pytestmark = pytest.mark.anyio

T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def one_failover_call() -> list[ev.Event]:
    """A call: a fails twice (a backoff between), fails over, b answers."""
    call = "c-1"
    return [
        ev.EngineStarted(at=at(0), models=("a", "b")),
        ev.CallStarted(at=at(1), call_id=call, order=("a", "b")),
        ev.AttemptStarted(at=at(1), call_id=call, model_id="a", attempt=1),
        ev.AttemptFailed(
            at=at(2), call_id=call, model_id="a", attempt=1, latency=1.0,
            error_kind=ErrorKind.SERVER, message="503",
        ),
        ev.Backoff(at=at(2), call_id=call, model_id="a", attempt=1, delay=0.5),
        ev.AttemptStarted(at=at(3), call_id=call, model_id="a", attempt=2),
        ev.AttemptFailed(
            at=at(4), call_id=call, model_id="a", attempt=2, latency=1.0,
            error_kind=ErrorKind.SERVER, message="503", final=True,
        ),
        ev.Failover(
            at=at(4), call_id=call, from_model="a", to_model="b", reason=ErrorKind.SERVER
        ),
        ev.AttemptStarted(at=at(4), call_id=call, model_id="b", attempt=1),
        ev.AttemptSucceeded(at=at(5), call_id=call, model_id="b", attempt=1, latency=0.2),
        ev.CallSucceeded(
            at=at(5), call_id=call, model_id="b", attempts=3, failovers=1, latency=4.0
        ),
    ]  # fmt: skip


def test_a_failover_call_folds_into_the_design_metrics() -> None:
    snap = replay(one_failover_call())
    m = snap.metrics
    assert (m.calls, m.calls_succeeded, m.calls_failed) == (1, 1, 0)
    assert (m.attempts, m.attempt_failures, m.retries, m.failovers) == (3, 2, 1, 1)
    assert (m.backoffs, m.backoff_seconds) == (1, 0.5)
    assert m.failures_by_kind == {"server": 2}
    a, b = m.by_model["a"], m.by_model["b"]
    assert (a.attempts, a.failures, a.successes, a.calls_served) == (2, 2, 0, 0)
    assert (b.attempts, b.failures, b.successes, b.calls_served) == (1, 0, 1, 1)
    assert (b.latency_count, b.latency_sum, b.latency_max) == (1, 0.2, 0.2)
    assert snap.states["a"].streak == 1
    assert snap.states["b"].streak == 0
    assert snap.models == ("a", "b")
    assert snap.events == len(one_failover_call())
    assert snap.last_at == at(5)


def test_metrics_has_every_field_the_design_names() -> None:
    fields = set(Metrics.__struct_fields__)
    assert {
        "calls", "calls_succeeded", "calls_failed", "attempts", "attempt_failures",
        "retries", "failovers", "backoff_seconds", "by_model",
    } <= fields  # fmt: skip
    assert {"attempts", "failures", "successes"} <= set(ModelMetrics.__struct_fields__)


def test_the_fold_never_reads_seq() -> None:
    plain = one_failover_call()
    numbered = [msgspec.structs.replace(e, seq=i * 7 + 3) for i, e in enumerate(plain)]
    assert replay(plain) == replay(numbered)


def test_failed_and_cancelled_calls_and_probes_are_counted() -> None:
    events: list[ev.Event] = [
        ev.CallStarted(at=at(0), call_id="x", order=("a",)),
        ev.RetryBudgetExhausted(at=at(0), call_id="x", model_id="a"),
        ev.CallFailed(
            at=at(1), call_id="x", reason="exhausted", error_kind=ErrorKind.SERVER,
            attempts=1, failovers=0, latency=1.0,
        ),
        ev.CallStarted(at=at(2), call_id="y", order=("a",)),
        ev.CallCancelled(at=at(3), call_id="y", model_id="a"),
        ev.HealthProbe(at=at(4), model_id="a", ok=True, latency=0.1),
        ev.HealthProbe(
            at=at(5), model_id="a", ok=False, latency=0.1, error_kind=ErrorKind.TIMEOUT
        ),
    ]  # fmt: skip
    m = replay(events).metrics
    assert (m.calls, m.calls_failed, m.calls_cancelled, m.calls_succeeded) == (2, 1, 1, 0)
    assert m.retry_budget_exhausted == 1
    assert (m.probes, m.probe_failures) == (2, 1)


def test_latency_histogram_mean_and_quantiles() -> None:
    latencies = [0.003, 0.2, 0.2, 100.0]
    events: list[ev.Event] = [
        ev.AttemptSucceeded(at=at(i), call_id="c", model_id="a", attempt=1, latency=lat)
        for i, lat in enumerate(latencies)
    ]
    model = replay(events).metrics.by_model["a"]
    assert sum(model.latency_buckets) == len(latencies)
    assert model.latency_buckets[0] == 1  # 3 ms <= the first bound
    assert model.latency_buckets[LATENCY_BUCKETS.index(0.25)] == 2
    assert model.latency_buckets[-1] == 1  # beyond the last bound
    assert model.latency_mean == pytest.approx(sum(latencies) / 4)
    assert model.latency_quantile(0.5) == 0.25
    assert model.latency_quantile(1.0) == 100.0
    assert ModelMetrics().latency_mean is None
    assert ModelMetrics().latency_quantile(0.5) is None


def test_state_changes_set_the_state_and_write_the_audit_trail() -> None:
    events: list[ev.Event] = [
        ev.AttemptFailed(
            at=at(0), call_id="c", model_id="a", attempt=1, latency=0.1,
            error_kind=ErrorKind.SERVER, final=True,
        ),
        ev.StateChanged(
            at=at(1), model_id="a", from_state=HealthState.HEALTHY,
            to_state=HealthState.UNHEALTHY, reason="probe failed",
        ),
    ]  # fmt: skip
    snap = replay(events)
    state = snap.states["a"]
    assert (state.state, state.since, state.reason, state.streak) == (
        HealthState.UNHEALTHY, at(1), "probe failed", 1,
    )  # fmt: skip
    (entry,) = snap.audit
    assert (entry.model_id, entry.action, entry.from_state, entry.to_state) == (
        "a", "state_changed", HealthState.HEALTHY, HealthState.UNHEALTHY,
    )  # fmt: skip
    recovered = [
        *events,
        ev.StateChanged(
            at=at(2), model_id="a", from_state=HealthState.UNHEALTHY,
            to_state=HealthState.HEALTHY, reason="probe succeeded",
        ),
    ]  # fmt: skip
    assert replay(recovered).states["a"].streak == 0
    assert replay(recovered).metrics.state_changes == 2


def test_non_counting_or_non_final_failures_leave_the_streak_alone() -> None:
    events: list[ev.Event] = [
        ev.AttemptFailed(
            at=at(0), call_id="c", model_id="a", attempt=1, latency=0.1,
            error_kind=ErrorKind.SERVER, final=False,
        ),
        ev.AttemptFailed(
            at=at(1), call_id="c", model_id="a", attempt=2, latency=0.1,
            error_kind=ErrorKind.CONTEXT_LENGTH, final=True, counts=False,
        ),
    ]  # fmt: skip
    assert replay(events).state_of("a").streak == 0


def test_maintenance_on_and_off_with_the_operator_in_the_audit_trail() -> None:
    events: list[ev.Event] = [
        ev.Maintenance(at=at(0), model_id="a", on=True, reason="upgrade", by="alice"),
        ev.Maintenance(at=at(1), model_id="a", on=False, reason="done", by="cli"),
        ev.Maintenance(at=at(2), model_id="b", on=False, reason="noop", by="cli"),
    ]
    snap = replay(events)
    assert snap.states["a"].state is HealthState.HEALTHY
    assert snap.states["b"].state is HealthState.HEALTHY
    assert [(e.model_id, e.action, e.to_state, e.by) for e in snap.audit] == [
        ("a", "maintenance_on", HealthState.MAINTENANCE, "alice"),
        ("a", "maintenance_off", HealthState.HEALTHY, "cli"),
        ("b", "maintenance_off", HealthState.HEALTHY, "cli"),
    ]
    assert snap.metrics.state_changes == 2
    assert replay(events[:1]).states["a"].state is HealthState.MAINTENANCE


def test_engine_started_lists_models_as_healthy() -> None:
    snap = replay([ev.EngineStarted(at=at(0), models=("x", "y"))])
    assert snap.models == ("x", "y")
    assert {m: s.state for m, s in snap.states.items()} == dict.fromkeys(
        ("x", "y"), HealthState.HEALTHY
    )


async def test_replay_reads_a_store_a_path_and_a_list_alike(tmp_path: Path) -> None:
    log = str(tmp_path / "events.sqlite3")
    primary = FakeModelClient(failing("server"), model_id="primary")
    async with engine([primary, FakeModelClient(model_id="b")], event_store=log) as fo:
        await fo.call("hi")
    from_store = replay(fo.event_store)
    assert replay(log) == from_store
    assert replay(list(fo.event_store.read())) == from_store
    with SQLiteEventStore(log) as store:
        assert replay(store) == from_store


async def test_live_metrics_obey_their_invariants() -> None:
    clients = [
        FakeModelClient(failing("server"), model_id="a"),
        FakeModelClient(failing("rate_limited"), model_id="b"),
        FakeModelClient(model_id="c"),
    ]
    async with engine(clients, {"max_attempts": 2, "base_delay": 0.1}) as fo:
        for _ in range(3):
            await fo.call("hi")
        m = fo.metrics()
    assert m.calls == m.calls_succeeded + m.calls_failed + m.calls_cancelled == 3
    assert m.attempts == sum(x.attempts for x in m.by_model.values())
    for model in m.by_model.values():
        assert model.attempts == model.successes + model.failures
    assert m.attempt_failures == sum(m.failures_by_kind.values())
    assert m.by_model["c"].calls_served == 3
    assert [len(c.calls) for c in clients] == [m.by_model[mid].attempts for mid in ("a", "b", "c")]
