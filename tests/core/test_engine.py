"""The engine's contract (DESIGN.md): identifiers, order, error kinds, backoff, deadlines,
retry budget, cancellation, sync clients, the failover log line, events and secrets."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from freezegun import freeze_time

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    DeadlineExceededError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    replay,
)

from .fakes import (
    FakeClock,
    FakeModelClient,
    SyncFakeModelClient,
    always,
    engine,
    failing,
    hang,
    ids,
    script,
)

pytestmark = pytest.mark.anyio


def pair(primary: FakeModelClient, answer: str = "secondary answer") -> list[FakeModelClient]:
    """``primary`` then a secondary that always answers."""
    return [primary, FakeModelClient(always(answer), model_id="secondary")]


def types_of(fo: MultiModelFailover) -> list[str]:
    return [e.type for e in fo.event_store.read()]


def streak(fo: MultiModelFailover, model_id: str) -> int:
    return replay(fo.event_store).states[model_id].streak


# -- identifiers ------------------------------------------------------------------------------


async def test_mapping_keys_are_the_ids_in_their_order() -> None:
    clients = {"b": FakeModelClient(model_id="ignored"), "a": FakeModelClient()}
    async with engine(clients) as fo:
        assert fo.rotation == ["b", "a"]
        assert set(fo.states) == {"b", "a"}
        await fo.call("hi")
    assert ids(fo.event_store.read(), "attempt_started") == ["b"]


async def test_sequence_ids_come_from_a_str_model_id_else_the_position() -> None:
    odd = FakeModelClient()
    odd.model_id = 7  # type: ignore[assignment]  # not a str: falls back to the position
    clients = [FakeModelClient(model_id="gpt"), FakeModelClient(), odd]
    async with engine(clients) as fo:
        assert fo.rotation == ["gpt", "client-1", "client-2"]


@pytest.mark.parametrize(
    "clients",
    [
        [FakeModelClient(model_id="x"), FakeModelClient(model_id="x")],
        [FakeModelClient(model_id="client-1"), FakeModelClient()],
    ],
)
def test_duplicate_ids_are_an_error(clients: list[FakeModelClient]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        MultiModelFailover(clients)


@pytest.mark.parametrize("clients", [[], {}])
def test_no_clients_is_an_error(clients: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        MultiModelFailover(clients)


def test_a_client_without_call_is_refused() -> None:
    with pytest.raises(TypeError, match="call"):
        MultiModelFailover([object()])


# -- order ------------------------------------------------------------------------------------


async def test_configured_order_when_all_are_healthy() -> None:
    clients = [FakeModelClient(model_id=m) for m in ("a", "b", "c")]
    async with engine(clients) as fo:
        assert fo.rotation == ["a", "b", "c"]
        assert fo.states == dict.fromkeys(("a", "b", "c"), HealthState.HEALTHY)


async def test_unhealthy_and_maintenance_clients_leave_the_rotation() -> None:
    a, b, c, d = (FakeModelClient(model_id=m) for m in "abcd")
    b.probe = False
    async with engine([a, b, c, d]) as fo:
        await fo.check_health()
        await fo.set_maintenance("c", True, reason="upgrade")
        assert fo.rotation == ["a", "d"]
        a.handler = failing("server")
        assert await fo.call("hi") == "ok"
    assert ids(fo.event_store.read(), "attempt_started")[-1] == "d"
    assert b.calls == []
    assert c.calls == []


async def test_degraded_clients_stay_in_rotation_in_their_place() -> None:
    primary = FakeModelClient(script(ModelError("down", kind="server"), "back"), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 1}) as fo:
        assert await fo.call("one") == "secondary answer"
        assert fo.states["primary"] is HealthState.DEGRADED
        assert fo.rotation == ["primary", "secondary"]
        assert await fo.call("two") == "back"


async def test_last_resort_tries_every_non_maintenance_client_in_order() -> None:
    a, b, c = (FakeModelClient(failing("server"), model_id=m, probe=False) for m in "abc")
    async with engine([a, b, c], {"max_attempts": 1}) as fo:
        await fo.check_health()
        await fo.set_maintenance("b", True)
        assert fo.states == {
            "a": HealthState.UNHEALTHY,
            "b": HealthState.MAINTENANCE,
            "c": HealthState.UNHEALTHY,
        }
        assert fo.rotation == ["a", "c"]
        c.handler = always("from c")
        assert await fo.call("hi") == "from c"
    events = list(fo.event_store.read())
    started = [e for e in events if e.type == "call_started"][-1]
    assert started.last_resort is True  # type: ignore[union-attr]
    assert started.order == ("a", "c")  # type: ignore[union-attr]
    assert ids(events, "attempt_started") == ["a", "c"]
    assert b.calls == []


async def test_maintenance_clients_are_never_called_even_when_nothing_else_is_left() -> None:
    a, b = FakeModelClient(model_id="a"), FakeModelClient(model_id="b")
    async with engine([a, b]) as fo:
        await fo.set_maintenance("a", True)
        await fo.set_maintenance("b", True)
        assert fo.rotation == []
        with pytest.raises(AllModelsFailedError) as raised:
            await fo.call("hi")
    assert raised.value.attempts == ()
    assert a.calls == []
    assert b.calls == []
    assert "call_failed" in types_of(fo)


# -- what each error kind does ----------------------------------------------------------------

# kind: (attempts on primary with max_attempts=3, fails over, primary's state afterwards)
# kind: (attempts on the primary, fails over, the primary's state after one call). A
# timeout (a silence) fails over at once; content_filter fails fast (tested on its own).
KIND_TABLE = {
    "rate_limited": (3, True, HealthState.DEGRADED),
    "timeout": (1, True, HealthState.DEGRADED),
    "server": (3, True, HealthState.DEGRADED),
    "unknown": (3, True, HealthState.DEGRADED),
    "auth": (1, True, HealthState.UNHEALTHY),
    "context_length": (1, True, HealthState.HEALTHY),
}


@pytest.mark.parametrize("kind", sorted(KIND_TABLE))
async def test_error_kind_decides_retry_failover_and_health(kind: str) -> None:
    attempts, fails_over, state = KIND_TABLE[kind]
    primary = FakeModelClient(failing(kind), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 3, "base_delay": 0.01}) as fo:
        assert await fo.call("hi") == "secondary answer"
        assert fo.states["primary"] is state
    assert len(primary.calls) == attempts
    failovers = [e for e in fo.event_store.read() if e.type == "failover"]
    assert len(failovers) == int(fails_over)
    assert failovers[0].reason == kind  # type: ignore[union-attr]
    assert streak(fo, "primary") == int(state is not HealthState.HEALTHY)


async def test_bad_request_fails_the_call_fast_without_failover() -> None:
    primary = FakeModelClient(failing("bad_request", "prompt is malformed"), model_id="primary")
    clients = pair(primary)
    async with engine(clients, {"max_attempts": 3}) as fo:
        with pytest.raises(ModelError) as raised:
            await fo.call("hi")
        assert fo.states["primary"] is HealthState.HEALTHY
    assert raised.value.kind is ErrorKind.BAD_REQUEST
    assert not isinstance(raised.value, AllModelsFailedError)
    assert "malformed" in str(raised.value)
    assert len(primary.calls) == 1
    assert clients[1].calls == []
    assert "failover" not in types_of(fo)
    assert streak(fo, "primary") == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RuntimeError("connection reset"), "unknown"),
        (KeyError("choices"), "unknown"),
        (ModelError("bare"), "unknown"),
    ],
)
async def test_any_exception_is_a_failed_attempt_that_is_retried(
    error: Exception, kind: str
) -> None:
    primary = FakeModelClient(script(error, "recovered"), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 2}) as fo:
        assert await fo.call("hi") == "recovered"
    failed = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert [f.error_kind for f in failed] == [kind]  # type: ignore[union-attr]
    assert len(primary.calls) == 2


async def test_a_timeout_error_from_a_client_fails_over_at_once() -> None:
    primary = FakeModelClient(script(TimeoutError("read timed out"), "later"), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 3}) as fo:
        assert await fo.call("hi") == "secondary answer"
    failed = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert [(f.error_kind, f.final) for f in failed] == [("timeout", True)]  # type: ignore[union-attr]
    assert len(primary.calls) == 1


async def test_the_response_object_is_returned_unchanged() -> None:
    answer = object()
    async with engine([FakeModelClient(always(answer))]) as fo:
        assert await fo.call("hi") is answer


async def test_rate_limited_waits_for_retry_after_when_it_fits_the_budget() -> None:
    clock = FakeClock()
    limited = ModelError("slow down", kind="rate_limited", retry_after=3.0)
    primary = FakeModelClient(script(limited, "primary answer"), model_id="primary")
    async with engine(pair(primary), {"base_delay": 0.5}, clock=clock) as fo:
        assert await fo.call("hi") == "primary answer"
    assert clock.sleeps == [3.0]
    (backoff,) = [e for e in fo.event_store.read() if e.type == "backoff"]
    assert backoff.retry_after == 3.0  # type: ignore[union-attr]


async def test_rate_limited_keeps_a_longer_backoff_over_a_short_retry_after() -> None:
    clock = FakeClock()
    limited = ModelError("slow down", kind="rate_limited", retry_after=0.1)
    primary = FakeModelClient(script(limited, "primary answer"), model_id="primary")
    async with engine(pair(primary), {"base_delay": 2.0}, clock=clock) as fo:
        await fo.call("hi")
    assert clock.sleeps == [2.0]


async def test_rate_limited_fails_over_at_once_when_retry_after_exceeds_the_budget() -> None:
    clock = FakeClock()
    primary = FakeModelClient(
        failing("rate_limited", "quota", retry_after=30.0), model_id="primary"
    )
    async with engine(pair(primary), {"call_budget": 10, "max_attempts": 3}, clock=clock) as fo:
        assert await fo.call("hi") == "secondary answer"
    assert clock.sleeps == []
    assert len(primary.calls) == 1


async def test_all_models_failed_lists_every_attempt_with_scrubbed_messages() -> None:
    secret = "sk-" + "A1b2C3d4E5f6G7h8J9k0L1m2"
    primary = FakeModelClient(failing("server", f"key {secret} refused"), model_id="primary")
    secondary = FakeModelClient(always(RuntimeError("socket closed")), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 2, "base_delay": 0.01}) as fo:
        with pytest.raises(AllModelsFailedError) as raised:
            await fo.call("hi")
    attempts = raised.value.attempts
    assert [(a.model_id, a.attempt, a.error_kind) for a in attempts] == [
        ("primary", 1, ErrorKind.SERVER),
        ("primary", 2, ErrorKind.SERVER),
        ("secondary", 1, ErrorKind.UNKNOWN),
        ("secondary", 2, ErrorKind.UNKNOWN),
    ]
    assert "socket closed" in attempts[-1].message
    assert all(secret not in a.message for a in attempts)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)
    assert isinstance(raised.value, ModelError)


# -- backoff placement and the deadline -------------------------------------------------------


async def test_backoff_only_between_attempts_on_the_same_client() -> None:
    clock = FakeClock()
    a = FakeModelClient(failing("server"), model_id="a")
    b = FakeModelClient(failing("server"), model_id="b")
    c = FakeModelClient(always("from c"), model_id="c")
    policy = {"max_attempts": 3, "base_delay": 0.5, "multiplier": 2.0}
    async with engine([a, b, c], policy, clock=clock) as fo:
        assert await fo.call("hi") == "from c"
    # The schedule starts again on each client; moving to the next client does not wait.
    assert clock.sleeps == [0.5, 1.0, 0.5, 1.0]
    events = [e for e in fo.event_store.read() if e.type in ("backoff", "attempt_started")]
    for before, after in itertools.pairwise(events):
        if before.type == "backoff":
            assert after.type == "attempt_started"
            assert after.model_id == before.model_id  # type: ignore[union-attr]
            assert after.attempt == before.attempt + 1  # type: ignore[union-attr]
    assert fo.metrics().backoff_seconds == 3.0


async def test_a_sleep_never_runs_past_the_deadline() -> None:
    clock = FakeClock()
    a = FakeModelClient(failing("server"), model_id="a")
    b = FakeModelClient(always("from b"), model_id="b")
    policy = {"max_attempts": 10, "base_delay": 1.0, "multiplier": 2.0, "call_budget": 5}
    start = clock.now
    async with engine([a, b], policy, clock=clock) as fo:
        assert await fo.call("hi") == "from b"
    assert clock.sleeps == [1.0, 2.0]  # the next wait (4 s) would end past the 5 s budget
    assert all(at + seconds < start + 5 for at, seconds in clock.waits)


async def test_the_calls_timeout_shortens_the_budget() -> None:
    clock = FakeClock()
    a = FakeModelClient(failing("server"), model_id="a")
    policy = {"max_attempts": 10, "base_delay": 1.0, "multiplier": 2.0}
    async with engine([a, FakeModelClient(model_id="b")], policy, clock=clock) as fo:
        await fo.call("hi", timeout=2.5)
    assert clock.sleeps == [1.0]


async def test_slow_attempts_use_up_the_budget_and_end_the_call() -> None:
    clock = FakeClock()

    def slow_failure(prompt: str) -> object:
        clock.advance(4.0)
        raise ModelError("overloaded", kind="server")

    a = FakeModelClient(slow_failure, model_id="a")
    b = FakeModelClient(model_id="b")
    policy = {"max_attempts": 5, "base_delay": 0.5, "call_budget": 5}
    async with engine([a, b], policy, clock=clock) as fo:
        with pytest.raises(DeadlineExceededError):
            await fo.call("hi")
    assert all(at + seconds < 1000 + 5 for at, seconds in clock.waits)
    assert b.calls == []


async def test_max_total_attempts_caps_the_call_across_clients() -> None:
    a, b, c = (FakeModelClient(failing("server"), model_id=m) for m in "abc")
    async with engine([a, b, c], {"max_attempts": 2, "max_total_attempts": 3}) as fo:
        with pytest.raises(AllModelsFailedError) as raised:
            await fo.call("hi")
    assert (len(a.calls), len(b.calls), len(c.calls)) == (2, 1, 0)
    assert len(raised.value.attempts) == 3
    (failed,) = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert failed.reason == "max_total_attempts"  # type: ignore[union-attr]


# -- timeouts ---------------------------------------------------------------------------------


async def test_attempt_timeout_is_a_timeout_that_counts() -> None:
    primary = FakeModelClient(hang, model_id="primary")
    async with engine(pair(primary), {"max_attempts": 1, "attempt_timeout": 0.05}) as fo:
        assert await fo.call("hi") == "secondary answer"
        assert fo.states["primary"] is HealthState.DEGRADED
    (failed,) = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert failed.error_kind is ErrorKind.TIMEOUT  # type: ignore[union-attr]
    assert failed.counts is True  # type: ignore[union-attr]
    assert streak(fo, "primary") == 1


async def test_the_callers_timeout_is_never_held_against_the_model() -> None:
    primary = FakeModelClient(hang, model_id="primary")
    clients = pair(primary)
    async with engine(clients, {"max_attempts": 3}) as fo:
        with pytest.raises(DeadlineExceededError) as raised:
            await fo.call("hi", timeout=0.05)
        assert fo.states["primary"] is HealthState.HEALTHY
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, AllModelsFailedError)
    assert clients[1].calls == []
    assert streak(fo, "primary") == 0
    (failed,) = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert failed.reason == "deadline"  # type: ignore[union-attr]


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf])
async def test_a_timeout_that_is_not_positive_and_finite_is_refused(timeout: float) -> None:
    async with engine([FakeModelClient()]) as fo:
        with pytest.raises(ValueError, match="timeout"):
            await fo.call("hi", timeout=timeout)


@pytest.mark.parametrize("prompt", [None, 42, b"bytes"])
async def test_a_prompt_that_is_not_text_is_refused(prompt: Any) -> None:
    client = FakeModelClient()
    async with engine([client]) as fo:
        with pytest.raises(TypeError, match="prompt"):
            await fo.call(prompt)
    assert client.calls == []


# -- retry budget -----------------------------------------------------------------------------


async def test_spent_retry_budget_fails_over_instead_of_retrying(
    log_records: list[dict[str, Any]],
) -> None:
    clock = FakeClock()
    primary = FakeModelClient(failing("server"), model_id="primary")
    policy = {"max_attempts": 3, "retry_budget_ratio": 0, "retry_budget_min_per_s": 0}
    async with engine(pair(primary), policy, clock=clock) as fo:
        assert await fo.call("hi") == "secondary answer"
        assert fo.metrics().retry_budget_exhausted == 1
    assert len(primary.calls) == 1
    assert clock.sleeps == []
    types = types_of(fo)
    assert types.index("retry_budget_exhausted") < types.index("failover")
    assert fo.metrics().retries == 0
    assert any("retry budget" in str(r["message"]) for r in log_records)


async def test_retry_budget_grows_with_calls() -> None:
    clock = FakeClock()
    primary = FakeModelClient(
        script(ModelError("x", kind="server"), ModelError("x", kind="server"), "ok"),
        model_id="primary",
    )
    policy = {"max_attempts": 2, "retry_budget_ratio": 0.5, "retry_budget_min_per_s": 0}
    async with engine(pair(primary), policy, clock=clock) as fo:
        # One call has deposited half a retry: not enough, so the engine fails over.
        assert await fo.call("one") == "secondary answer"
        # Two calls have deposited a whole retry: the same client is retried.
        assert await fo.call("two") == "ok"
    assert fo.metrics().retry_budget_exhausted == 1
    assert fo.metrics().retries == 1


# -- cancellation -----------------------------------------------------------------------------


async def run_and_cancel(fo: MultiModelFailover, entered: anyio.Event) -> list[str]:
    """Start a call, cancel it once ``entered`` is set; return what ran after the call."""
    after: list[str] = []
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await fo.call("hi")
            after.append("call returned")
        after.append("cancelled" if scope.cancelled_caught else "not cancelled")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(caller)
            await entered.wait()
            scope.cancel()
    return after


async def test_cancelling_during_an_attempt_propagates_and_spares_the_model() -> None:
    entered = anyio.Event()

    async def stuck(prompt: str) -> object:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    primary = FakeModelClient(stuck, model_id="primary")
    clients = pair(primary)
    async with engine(clients) as fo:
        assert await run_and_cancel(fo, entered) == ["cancelled"]
        assert fo.states["primary"] is HealthState.HEALTHY
    events = list(fo.event_store.read())
    assert events[-2].type == "call_cancelled"
    assert events[-2].model_id == "primary"  # type: ignore[union-attr]
    assert "attempt_failed" not in [e.type for e in events]
    assert clients[1].calls == []
    assert streak(fo, "primary") == 0
    assert fo.metrics().calls_cancelled == 1


async def test_cancelling_during_a_backoff_propagates_and_spares_the_model() -> None:
    clock = FakeClock()
    entered = anyio.Event()

    async def block(seconds: float) -> None:
        entered.set()
        await anyio.sleep_forever()

    clock.on_sleep = block
    primary = FakeModelClient(failing("server"), model_id="primary")
    clients = pair(primary)
    async with engine(clients, {"max_attempts": 3}, clock=clock) as fo:
        assert await run_and_cancel(fo, entered) == ["cancelled"]
        assert fo.states["primary"] is HealthState.HEALTHY
    types = types_of(fo)
    assert types[types.index("backoff") + 1] == "call_cancelled"
    assert clients[1].calls == []
    assert streak(fo, "primary") == 0


async def test_a_callers_cancel_scope_deadline_is_not_a_model_failure() -> None:
    primary = FakeModelClient(hang, model_id="primary")
    async with engine(pair(primary)) as fo:
        with anyio.move_on_after(0.05) as scope:
            await fo.call("hi")
        assert scope.cancelled_caught
        assert fo.states["primary"] is HealthState.HEALTHY
    assert "call_cancelled" in types_of(fo)
    assert streak(fo, "primary") == 0


# -- sync clients -----------------------------------------------------------------------------


async def test_sync_clients_run_off_the_event_loop() -> None:
    entered, gate = threading.Event(), threading.Event()

    def waits_for_the_loop(prompt: str) -> str:
        entered.set()
        # Only a task on the event loop opens the gate: a call on the loop would deadlock.
        return "sync answer" if gate.wait(timeout=5) else "blocked the loop"

    client = SyncFakeModelClient(waits_for_the_loop, model_id="sync")

    async def open_gate() -> None:
        while not entered.is_set():  # noqa: ASYNC110 - a worker thread sets it
            await anyio.sleep(0.001)
        gate.set()

    async with engine([client]) as fo:
        async with anyio.create_task_group() as group:
            group.start_soon(open_gate)
            assert await fo.call("hi") == "sync answer"
        assert await fo.check_health() == {"sync": HealthState.HEALTHY}
    loop_thread = threading.get_ident()
    assert client.call_threads
    assert loop_thread not in client.call_threads
    assert client.probe_threads
    assert loop_thread not in client.probe_threads


async def test_sync_client_failures_fail_over_like_async_ones() -> None:
    bad = SyncFakeModelClient(always(ConnectionError("refused")), model_id="bad")
    unhealthy = SyncFakeModelClient(model_id="probe-fails", healthy=False)
    good = SyncFakeModelClient(always("fine"), model_id="good")
    async with engine([bad, good, unhealthy], {"max_attempts": 1}) as fo:
        assert await fo.call("hi") == "fine"
        states = await fo.check_health()
    assert states["probe-fails"] is HealthState.UNHEALTHY


# -- the failover log line --------------------------------------------------------------------


async def test_a_failover_is_logged_at_warning_with_both_ids(
    log_records: list[dict[str, Any]],
) -> None:
    primary = FakeModelClient(failing("server"), model_id="primary")
    async with engine(pair(primary), {"max_attempts": 1}) as fo:
        await fo.call("hi")
    warnings = [r for r in log_records if r["level"].name == "WARNING"]
    (record,) = [r for r in warnings if r["extra"].get("to_model")]
    assert "primary" in record["message"]
    assert "secondary" in record["message"]
    assert record["extra"]["from_model"] == "primary"
    assert record["extra"]["to_model"] == "secondary"
    assert record["name"].startswith("devs.risks.multi_model_failover")


# -- the events -------------------------------------------------------------------------------

CALL_EVENTS = {
    "call_started", "attempt_started", "attempt_succeeded", "attempt_failed", "backoff",
    "retry_budget_exhausted", "failover", "call_succeeded", "call_failed", "call_cancelled",
}  # fmt: skip
MODEL_EVENTS = {
    "attempt_started", "attempt_succeeded", "attempt_failed", "backoff", "health_probe",
    "state_changed", "maintenance", "retry_budget_exhausted",
}  # fmt: skip


async def eventful(fo: MultiModelFailover) -> None:
    """One call with a retry, a backoff and a failover; a failed call; a probe round."""
    await fo.call("first")
    with pytest.raises(AllModelsFailedError):
        await fo.call("second")
    await fo.check_health()
    await fo.set_maintenance("secondary", True, reason="upgrade")


def eventful_clients() -> list[FakeModelClient]:
    primary = FakeModelClient(failing("server"), model_id="primary", probe=False)
    secondary = FakeModelClient(
        script("answer", ModelError("down", kind="server")), model_id="secondary"
    )
    return [primary, secondary]


async def test_every_event_has_type_seq_and_utc_time() -> None:
    async with engine(eventful_clients(), {"max_attempts": 2}) as fo:
        await eventful(fo)
    events = list(fo.event_store.read())
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for event in events:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", event.type)
        assert event.at.tzinfo is not None
        assert event.at.utcoffset() == datetime.timedelta(0)
    assert {"backoff", "failover", "call_failed", "health_probe", "maintenance"} <= {
        e.type for e in events
    }


async def test_call_and_model_events_carry_their_ids() -> None:
    async with engine(eventful_clients(), {"max_attempts": 2}) as fo:
        await eventful(fo)
    events = list(fo.event_store.read())
    calls = {e.call_id for e in events if e.type == "call_started"}  # type: ignore[union-attr]
    assert len(calls) == 2
    for event in events:
        if event.type in CALL_EVENTS:
            assert event.call_id in calls  # type: ignore[union-attr]
        if event.type in MODEL_EVENTS:
            assert event.model_id in ("primary", "secondary")  # type: ignore[union-attr]


async def test_failover_event_names_both_models_and_the_reason() -> None:
    async with engine(eventful_clients(), {"max_attempts": 2}) as fo:
        await fo.call("hi")
    (failover,) = [e for e in fo.event_store.read() if e.type == "failover"]
    assert failover.from_model == "primary"  # type: ignore[union-attr]
    assert failover.to_model == "secondary"  # type: ignore[union-attr]
    assert failover.reason is ErrorKind.SERVER  # type: ignore[union-attr]
    assert failover.call_id  # type: ignore[union-attr]


async def test_events_carry_the_frozen_wall_clock_time() -> None:
    frozen = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    # The event loops keep their real clocks; only wall-clock time is frozen.
    with (
        freeze_time(frozen, ignore=["anyio", "asyncio", "trio"], real_asyncio=True),
        anyio.fail_after(3),
    ):
        async with engine(eventful_clients(), {"max_attempts": 1}) as fo:
            await fo.call("hi")
    assert {e.at for e in fo.event_store.read()} == {frozen}


def file_bytes(folder: Path) -> bytes:
    """The bytes of every file in ``folder`` (the log, its WAL and shared memory)."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


def raw_rows(path: Path) -> str:
    """Every row of every table of an SQLite file, as one text."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]  # noqa: S608
    return "\n".join(rows)


async def test_no_prompt_text_is_stored(tmp_path: Path) -> None:
    prompt = "PROMPT-5c1e8a-tell-me-a-secret-recipe"
    log = tmp_path / "events.sqlite3"
    async with engine(eventful_clients(), {"max_attempts": 2}, event_store=str(log)) as fo:
        await fo.call(prompt)
        with pytest.raises(AllModelsFailedError):
            await fo.call(prompt)
    stored = raw_rows(log)
    assert "call_started" in stored
    assert "5c1e8a" not in stored
    assert b"5c1e8a" not in file_bytes(tmp_path)


SECRETS = {
    "sk-proj-Zq8Xw7Vu6Ts5Rq4Po3Nm2Lk1": "Zq8Xw7Vu6Ts5Rq4Po3Nm2Lk1",
    "sk-ant-api03-Hh7Gg6Ff5Ee4Dd3Cc2": "Hh7Gg6Ff5Ee4Dd3Cc2",
    "AIzaSyD4f3e2d1c0b9a8Z7Y6X5W4V3U2T1": "AIzaSyD4f3e2d1c0b9a8Z7Y6X5W4V3U2T1",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig": "eyJhbGciOiJIUzI1NiJ9",
    "https://example.test/v1/models?key=qwertyuiop123456&alt=json": "qwertyuiop123456",
    "https://example.test/v1?api_key=asdfghjkl987654": "asdfghjkl987654",
}
LEAK = " ".join(SECRETS)


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text


async def test_secrets_are_scrubbed_from_events_exceptions_and_logs(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    primary = FakeModelClient(
        always(RuntimeError(f"upstream said {LEAK}")),
        model_id="primary",
        probe=ConnectionError(f"probe refused {LEAK}"),
    )
    secondary = FakeModelClient(failing("auth", f"bad key {LEAK}"), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 2}, event_store=str(log)) as fo:
        with pytest.raises(AllModelsFailedError) as raised:
            await fo.call("hi")
        await fo.check_health()
    error = raised.value
    assert_no_secret(str(error))
    assert_no_secret(repr(error))
    assert_no_secret(" ".join(a.message for a in error.attempts))
    stored = raw_rows(log)
    assert "[redacted]" in stored
    assert_no_secret(stored)
    assert_no_secret(repr(replay(str(log))))
    assert log_records
    for record in log_records:
        assert_no_secret(str(record["message"]))
        assert_no_secret(repr(record["extra"]))
        assert_no_secret(repr(record["exception"]))
