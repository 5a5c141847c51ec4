"""Reading the recorded run: figures as the log's fold counts them, what no policy decides."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptStarted,
    AttemptSucceeded,
    CallCancelled,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Maintenance,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.projections import Snapshot, fold
from devs.risks.multi_model_failover.core.whatif import Change, record, what_if
from devs.risks.multi_model_failover.core.whatif.operators import Actions, MaintenanceAction

from .conftest import record_to
from .scenario import START, Action, CallSpec, Scenario, Spell

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def busy() -> Scenario:
    """Calls in flight together, failures of every kind, cancels, probes, an operator."""
    return Scenario(
        models=("primary", "secondary", "tertiary"),
        spells={
            "primary": [
                Spell(10, 40, "rate_limited", 0.05, retry_after=1.0, rate=0.6),
                Spell(40, 70, "server", 0.2, probe_ok=False),
            ],
            "secondary": [Spell(50, 60, "silence")],
            "tertiary": [Spell(0, 100, "content_filter", 0.1, rate=0.1)],
        },
        calls=[
            CallSpec(
                at=i * 0.4,
                timeout=(3.0 if i % 7 == 0 else None),
                cancel_after=(0.6 if i % 11 == 0 else None),
            )
            for i in range(250)
        ],
        retry_policy={"max_attempts": 3, "attempt_timeout": 4.0, "call_budget": 12.0},
        health_policy={"unhealthy_after": 3},
        probe_every=10.0,
        actions=[Action(30.0, "tertiary", True), Action(45.0, "tertiary", False)],
    )


async def test_the_figures_are_those_of_the_logs_own_fold(tmp_path: Path) -> None:
    events = await record_to(tmp_path / "log.sqlite3", busy())
    rec = record(events)
    side = rec.tally.figures()
    m = fold(events).metrics
    for name in (
        "calls", "calls_succeeded", "calls_failed", "calls_cancelled", "attempts",
        "attempt_failures", "retries", "failovers", "backoffs", "retry_budget_exhausted",
        "probes", "probe_failures", "state_changes",
    ):  # fmt: skip
        assert getattr(side, name) == getattr(m, name), name
    assert side.backoff_seconds == pytest.approx(m.backoff_seconds)
    assert m.calls_cancelled > 0
    assert m.failovers > 0
    assert m.state_changes > 0
    for model, figures in m.by_model.items():
        mine = side.by_model[model]
        assert (mine.attempts, mine.successes, mine.failures, mine.calls_served) == (
            figures.attempts, figures.successes, figures.failures, figures.calls_served,
        )  # fmt: skip
        assert mine.input_tokens == figures.input_tokens
    report = (await what_if(events)).report
    assert report.calibration.ok, report.calibration.mismatches[:1]


async def test_an_action_of_another_process_counts_from_when_the_engine_read_it(
    tmp_path: Path,
) -> None:
    # The operator takes the primary out at 15.5 s and puts it back at 40.5 s; the engine
    # reads the log 1 ms past every 10 s: calls keep to the old state until it does.
    scenario = Scenario(
        calls=[CallSpec(at=i * 1.0) for i in range(60)],
        actions=[
            Action(15.5, "primary", True, other_writer=True),
            Action(40.5, "primary", False, other_writer=True),
        ],
        follow_every=10.0,
        probe_every=None,
    )
    events = await record_to(tmp_path / "log.sqlite3", scenario)
    rec = record(events)
    on, off = rec.maintenance
    assert (on.at, off.at) == (15.5, 40.5)
    # Into maintenance: as early as the log allows, right after the last call that still
    # went to the primary. Out of it: as late as it allows, right before the first call that
    # went to it again (the engine read the log at 50.001 s, in between).
    assert on.effective == 20.0
    assert off.effective == 51.0
    report = (await what_if(events)).report
    assert report.calibration.ok, report.calibration.mismatches[:1]


async def test_the_callers_own_timeout_is_found_where_it_cut_an_attempt(
    tmp_path: Path,
) -> None:
    scenario = Scenario(
        spells={"primary": [Spell(0, 100, "silence")]},
        calls=[CallSpec(at=1.0, timeout=2.5), CallSpec(at=5.0)],
        retry_policy={"attempt_timeout": None, "call_budget": 30.0},
        probe_every=None,
    )
    events = await record_to(tmp_path / "log.sqlite3", scenario)
    rec = record(events)
    short, plain = rec.calls
    assert short.timeout == pytest.approx(2.5, abs=1e-6)
    assert plain.timeout is None  # it ran into the policy's own budget
    report = (await what_if(events, Change(retry_policy={"call_budget": 60.0}))).report
    assert report.calibration.ok
    assert report.recorded.calls_failed == report.what_if.calls_failed == 2
    # The caller's 2.5 s stay; the policy's budget is the what-if's.
    assert report.recorded.latency.max == pytest.approx(30.0)
    assert report.what_if.latency.max == pytest.approx(60.0)
    assert report.what_if.latency.p50 == pytest.approx(2.5)


def engine(seconds: float, models: tuple[str, ...] = ("a", "b")) -> EngineStarted:
    return EngineStarted(at=at(seconds), models=models, retry_policy={"max_attempts": 1})


async def test_a_call_the_process_never_finished_has_no_outcome_on_either_side() -> None:
    events: list[Event] = [
        engine(0),
        CallStarted(at=at(1), call_id="lost", order=("a", "b")),
        AttemptStarted(at=at(1), call_id="lost", model_id="a", attempt=1),
        engine(60),  # the process died with the call in flight; another one started
        CallStarted(at=at(61), call_id="next", order=("a", "b")),
        AttemptStarted(at=at(61), call_id="next", model_id="a", attempt=1),
        AttemptSucceeded(at=at(61.5), call_id="next", model_id="a", attempt=1, latency=0.5),
        CallSucceeded(
            at=at(61.5), call_id="next", model_id="a", attempts=1, failovers=0, latency=0.5
        ),
    ]
    result = await what_if(events)
    report = result.report
    assert report.calibration.ok, report.calibration.mismatches
    assert report.recorded.calls == report.what_if.calls == 2
    assert report.recorded.calls_succeeded == report.what_if.calls_succeeded == 1


async def test_a_caller_cancelled_while_its_answer_was_committed_is_cancelled_again() -> None:
    events: list[Event] = [
        engine(0),
        CallStarted(at=at(1), call_id="c1", order=("a", "b")),
        AttemptStarted(at=at(1), call_id="c1", model_id="a", attempt=1),
        AttemptSucceeded(at=at(1.5), call_id="c1", model_id="a", attempt=1, latency=0.5),
        CallSucceeded(at=at(1.5), call_id="c1", model_id="a", attempts=1, failovers=0, latency=0.5),
        CallCancelled(
            at=at(1.5002),
            call_id="c1",
            model_id="a",
            attempts=1,
            latency=0.5002,
            reason="cancelled while its outcome was committed",
            supersedes="call_succeeded",
        ),
    ]
    report = (await what_if(events)).report
    assert report.calibration.ok, report.calibration.mismatches
    assert report.what_if.calls_cancelled == report.recorded.calls_cancelled == 1
    assert report.what_if.calls_succeeded == report.recorded.calls_succeeded == 0


async def test_events_before_the_engine_start_only_set_the_state_it_starts_from() -> None:
    events: list[Event] = [
        Maintenance(at=at(0), model_id="a", on=True, reason="before", by="ops"),
        engine(1),
        CallStarted(at=at(2), call_id="c1", order=("b",)),
        AttemptStarted(at=at(2), call_id="c1", model_id="b", attempt=1),
        AttemptSucceeded(at=at(2.4), call_id="c1", model_id="b", attempt=1, latency=0.4),
        CallSucceeded(at=at(2.4), call_id="c1", model_id="b", attempts=1, failovers=0, latency=0.4),
    ]
    rec = record(events)
    assert rec.initial.states["a"].state is HealthState.MAINTENANCE
    report = (await what_if(events, initial=Snapshot())).report
    assert report.calibration.ok
    assert "a" not in report.what_if.by_model  # still in maintenance in the replay


async def test_nothing_to_replay_without_an_engine_start() -> None:
    with pytest.raises(ValueError, match="no engine_started"):
        await what_if([CallStarted(at=at(1), call_id="c1", order=("a",))])


async def test_a_change_over_a_recorded_policy_is_checked_against_it() -> None:
    events: list[Event] = [
        EngineStarted(at=at(0), models=("a",), health_policy={"degraded_after": 3}),
    ]
    with pytest.raises(ValueError, match=r"unhealthy_after \(2\) must be >= degraded_after"):
        await what_if(events, Change(health_policy={"unhealthy_after": 2}))
    with pytest.raises(ValueError, match="unknown model id"):
        await what_if(events, Change(without=("z",)))


def test_an_unknown_policy_key_is_refused_before_any_replay() -> None:
    with pytest.raises(ValueError, match="max_attempt"):
        Change(retry_policy={"max_attempt": 1})
    with pytest.raises(ValueError, match="error_actions"):
        Change(retry_policy={"error_actions": {"timeout": "panic"}})
    assert Change().empty
    assert not Change(without=("a",)).empty
    assert ErrorKind.SERVER  # the module's kinds are the engine's
    assert START < T0


def actions_of(*steps: tuple[float, bool]) -> Actions:
    found = Actions(base=False)
    for seq, (when, on) in enumerate(steps, 1):
        event = Maintenance(at=at(when), model_id="m", on=on, seq=seq * 1000)
        found.actions.append(MaintenanceAction(event, when))
    return found


def test_an_action_into_maintenance_counts_right_after_the_last_use() -> None:
    placed = actions_of((10.0, True))
    placed.sign(12.0, 1500, in_maintenance=False)  # a call still ordered it
    placed.sign(13.0, 1600, in_maintenance=True)  # the next one left it out
    placed.place(closing=None)
    (action,) = placed.actions
    assert (action.effective, action.prio) == (12.0, 1500.5)


def test_an_action_out_of_maintenance_waits_for_the_first_use_within_30_s() -> None:
    used = actions_of((10.0, True), (40.0, False))
    used.sign(41.0, 2500, in_maintenance=True)
    used.sign(51.0, 2600, in_maintenance=False)
    used.place(closing=None)
    assert (used.actions[1].effective, used.actions[1].prio) == (51.0, -math.inf)
    idle = actions_of((10.0, True), (40.0, False))
    idle.place(closing=None)
    assert idle.actions[1].effective == 70.0  # no sign: read within the probe interval
    restarted = actions_of((10.0, True), (40.0, False))
    restarted.place(closing=(45.0, 2999.5))  # a new engine reads it all at its start
    assert restarted.actions[1].effective == 45.0


def test_actions_count_in_log_order_whatever_the_signs() -> None:
    placed = actions_of((1.0, False), (2.0, True))
    placed.sign(1.5, 1500, in_maintenance=False)
    placed.place(closing=None)
    off, on = placed.actions
    assert (off.effective, off.prio) <= (on.effective, on.prio) == (2.0, 2000.0)


async def test_the_callers_timeout_is_read_from_the_log_even_where_it_cut_nothing(
    tmp_path: Path,
) -> None:
    # The call gave 2 s and was done in about 1 s (one failure, then the secondary): nothing
    # in the outcome shows its timeout, call_started holds it. Under three attempts with
    # backoff, the same caller would have given up at 2 s.
    scenario = Scenario(
        spells={"primary": [Spell(0, 100, "server", 0.5)]},
        calls=[CallSpec(at=1.0, timeout=2.0)],
        retry_policy={"max_attempts": 1, "call_budget": 30.0, "base_delay": 1.0},
        probe_every=None,
    )
    events = await record_to(tmp_path / "log.sqlite3", scenario)
    (call,) = record(events).calls
    assert call.timeout == 2.0
    report = (await what_if(events, Change(retry_policy={"max_attempts": 3}))).report
    assert report.calibration.ok
    assert report.recorded.calls_succeeded == 1
    assert report.what_if.calls_failed == 1  # the caller's 2 s ran out
    assert report.what_if.latency.max == pytest.approx(2.0)


async def test_a_retry_after_too_long_to_wait_is_read_from_the_log(tmp_path: Path) -> None:
    # 45 s asked, 12 s of budget: the engine failed over without a backoff event; the
    # attempt's own event holds the 45 s (not "at least what was left of the call").
    scenario = Scenario(
        spells={"primary": [Spell(0, 100, "rate_limited", 0.1, retry_after=45.0)]},
        calls=[CallSpec(at=1.0)],
        retry_policy={"max_attempts": 3, "call_budget": 12.0},
        probe_every=None,
    )
    events = await record_to(tmp_path / "log.sqlite3", scenario)
    rec = record(events)
    (limited,) = [o for o in rec.attempts if o.kind is ErrorKind.RATE_LIMITED]
    assert limited.retry_after == 45.0
    # With a budget that fits 45 s, the what-if waits them out and retries the primary.
    report = (await what_if(events, Change(retry_policy={"call_budget": 120.0}))).report
    assert report.calibration.ok
    assert report.what_if.backoff_seconds == pytest.approx(90.0)


async def test_a_log_from_before_timeouts_were_recorded_still_has_them_inferred(
    tmp_path: Path,
) -> None:
    scenario = Scenario(
        spells={"primary": [Spell(0, 100, "silence")]},
        calls=[CallSpec(at=1.0, timeout=2.5), CallSpec(at=5.0)],
        retry_policy={"attempt_timeout": None, "call_budget": 30.0},
        probe_every=None,
    )
    events = await record_to(tmp_path / "log.sqlite3", scenario)
    # As an engine of the version before wrote them: no events_version, no timeout.
    old = [
        msgspec.structs.replace(e, events_version=1)
        if isinstance(e, EngineStarted)
        else msgspec.structs.replace(e, timeout=None)
        if isinstance(e, CallStarted)
        else e
        for e in events
    ]
    short, plain = record(old).calls
    assert short.timeout == pytest.approx(2.5, abs=1e-3)  # where it cut the attempt
    assert plain.timeout is None
    assert (await what_if(old)).report.calibration.ok
