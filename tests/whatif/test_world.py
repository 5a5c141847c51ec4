"""The model of the world: which observation answers, and the backoff draws found again."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover.core.backoff import backoff_delay
from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    CallStarted,
    EngineStarted,
    Event,
    HealthProbe,
)
from devs.risks.multi_model_failover.core.policies import RetryPolicy
from devs.risks.multi_model_failover.core.whatif import record
from devs.risks.multi_model_failover.core.whatif.recording import CallRecord, recorded_draw
from devs.risks.multi_model_failover.core.whatif.world import World

T0 = datetime(2026, 2, 3, 4, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def attempt(call: str, model: str, start: float, latency: float, kind: str | None) -> list[Event]:
    began = AttemptStarted(at=at(start), call_id=call, model_id=model, attempt=1)
    if kind is None:
        return [
            began,
            AttemptSucceeded(
                at=at(start + latency), call_id=call, model_id=model, attempt=1, latency=latency
            ),
        ]
    ended = AttemptFailed(
        at=at(start + latency), call_id=call, model_id=model, attempt=1, latency=latency,
        error_kind=ErrorKind(kind), final=True,
    )  # fmt: skip
    return [began, ended]


def world_of(events: list[Event]) -> World:
    return World(record([EngineStarted(at=T0, models=("a", "b")), *events]))


NOBODY = CallRecord("nobody", 0.0, 0.0, 0)


def test_the_nearest_observation_answers_and_a_tie_goes_to_the_earlier() -> None:
    world = world_of(
        [
            CallStarted(at=at(10), call_id="c1", order=("a",)),
            *attempt("c1", "a", 10, 0.5, "server"),
            CallStarted(at=at(20), call_id="c2", order=("a",)),
            *attempt("c2", "a", 20, 0.7, None),
        ]
    )
    assert world.attempt(NOBODY, "a", 1, 12.0).kind is ErrorKind.SERVER
    assert world.attempt(NOBODY, "a", 1, 16.0).ok
    tie = world.attempt(NOBODY, "a", 1, 15.0)  # 5 s from each: the earlier one
    assert not tie.ok
    assert tie.latency == 0.5
    assert world.inferred_attempts == 3
    assert world.attempt(NOBODY, "b", 1, 15.0).message == "the log never saw b answer"


def test_an_attempt_of_the_call_at_its_recorded_moment_is_observed() -> None:
    events = [
        CallStarted(at=at(10), call_id="c1", order=("a",)),
        *attempt("c1", "a", 10, 0.5, "server"),
    ]
    rec = record([EngineStarted(at=T0, models=("a", "b")), *events])
    world = World(rec)
    call = rec.calls[0]
    start = rec.seconds(at(10))
    same = world.attempt(call, "a", 1, start + 0.01)  # within 50 ms: the same attempt
    assert same.observed
    assert same.kind is ErrorKind.SERVER
    assert world.inferred_attempts == 0
    exact = world.attempt(call, "a", 1, start)
    assert exact.end == rec.seconds(at(10.5))  # at the recorded instant itself
    later = world.attempt(call, "a", 1, start + 0.2)
    assert not later.observed
    assert world.inferred_attempts == 1


def test_probes_answer_attempts_the_log_did_not_see() -> None:
    world = world_of(
        [
            CallStarted(at=at(0), call_id="c1", order=("a",)),
            *attempt("c1", "a", 0, 0.9, None),
            HealthProbe(at=at(100), model_id="a", ok=False, latency=0.2, error_kind="server"),
            HealthProbe(at=at(200), model_id="a", ok=True, latency=0.1),
            HealthProbe(
                at=at(305),
                model_id="a",
                ok=False,
                latency=5.0,
                error_kind="timeout",
                message="probe timed out after 5s",
            ),
        ]
    )
    down = world.attempt(NOBODY, "a", 1, 101.0)
    assert (down.ok, down.kind, down.latency) == (False, ErrorKind.SERVER, 0.2)
    up = world.attempt(NOBODY, "a", 1, 199.0)
    assert up.ok
    assert up.latency == 0.9
    assert world.attempt(NOBODY, "a", 1, 300.0).silence  # a probe that timed out: silence
    assert world.probe("a", 110.0, None).kind is ErrorKind.SERVER
    assert world.inferred_probes == 1


# -- backoff draws -------------------------------------------------------------------------


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return a + self.value * (b - a)


@settings(max_examples=300, deadline=None)
@given(
    jitter=st.sampled_from(["full", "equal", "decorrelated"]),
    base=st.floats(0.01, 5),
    multiplier=st.floats(1, 4),
    cap=st.floats(0.05, 30),
    n=st.integers(1, 12),
    previous=st.one_of(st.none(), st.floats(0.01, 30)),
    fraction=st.floats(0, 1),
)
def test_a_recorded_delay_gives_back_a_draw_that_makes_it_again(
    jitter: str,
    base: float,
    multiplier: float,
    cap: float,
    n: int,
    previous: float | None,
    fraction: float,
) -> None:
    policy = RetryPolicy(jitter=jitter, base_delay=base, multiplier=multiplier, max_delay=cap)  # type: ignore[arg-type]
    delay = backoff_delay(policy, n, Fixed(fraction), previous)
    draw = recorded_draw(policy, n, previous, delay=delay)
    assert draw is not None
    assert draw.value is not None
    assert draw.low <= draw.value <= draw.high
    again = backoff_delay(policy, n, Fixed(0.0), previous) if draw.high == draw.low else None
    replay = _Exact(draw.value)
    assert backoff_delay(policy, n, replay, previous) == delay or again == delay


class _Exact(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_a_delay_retry_after_set_keeps_it_with_the_lowest_draw(jitter: str) -> None:
    policy = RetryPolicy(jitter=jitter, base_delay=0.5, max_delay=2.0)  # type: ignore[arg-type]
    draw = recorded_draw(policy, 1, None, delay=30.0, retry_after=30.0)
    assert draw is not None
    assert draw.value == draw.low
    assert draw.fraction is None  # where the draw fell is unknown: another policy infers it
    assert max(backoff_delay(policy, 1, _Exact(draw.value), None), 30.0) == 30.0


def test_no_jitter_draws_nothing() -> None:
    assert recorded_draw(RetryPolicy(jitter="none"), 3, None, delay=2.0) is None
