"""Calibration: the recorded policy, replayed, reproduces the log call by call.

On the demo's incident, and on random fault scripts (hypothesis): models that rate-limit, fail,
time out on their own or fall silent; callers with their own timeouts who give up; probes,
operators (in the engine's process and in another one), restarts with another policy, the
retry budget running dry, a monotonic clock offset from the wall clock, and code that takes
microseconds between two events of one instant, as a real process's does. Each script is
recorded by a real engine into a real store (SQLite, and PostgreSQL where a server can run),
read back, and replayed on asyncio or trio.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover.adapters.cli.demo import create_marked_log, play
from devs.risks.multi_model_failover.adapters.cli.render import Output
from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.core.protocols import EventStore
from devs.risks.multi_model_failover.core.whatif import Change, WhatIf, what_if
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .scenario import Action, CallSpec, Restart, Scenario, Spell, record_scenario

KINDS = (
    "rate_limited", "server", "unknown", "timeout_error", "silence", "auth",
    "context_length", "content_filter", "bad_request",
)  # fmt: skip


@pytest.mark.anyio
async def test_the_demo_incident_calibrates(tmp_path: Path) -> None:
    path = tmp_path / "demo.sqlite3"
    create_marked_log(path)
    await play(path, seed=7, out=Output(stream=io.StringIO()))
    with SQLiteEventStore(path, create=False) as store:
        events = list(store.read())
    same = (await what_if(events)).report
    assert same.calibration.ok, same.calibration.mismatches[:1]
    assert same.calibration.calls == same.recorded.calls > 150
    # The recorded policy: every figure again (latencies to the log's microsecond stamps).
    assert msgspec.structs.replace(same.what_if, latency=same.recorded.latency) == same.recorded
    for quantile in ("p50", "p95", "max"):
        assert getattr(same.what_if.latency, quantile) == pytest.approx(
            getattr(same.recorded.latency, quantile), abs=1e-5
        )
    assert same.recorded.failovers > 0
    assert same.recorded.retries > 0
    assert same.inferred.answers == 0
    fewer = (await what_if(events, Change(retry_policy={"max_attempts": 1}))).report
    assert fewer.calibration == same.calibration
    assert fewer.what_if.retries == 0 < fewer.recorded.retries


# -- random fault scripts ------------------------------------------------------------------


@st.composite
def spells(draw: st.DrawFn, span: float) -> list[Spell]:
    found = []
    for _ in range(draw(st.integers(0, 3))):
        start = draw(st.floats(0, span))
        found.append(
            Spell(
                start=start,
                end=start + draw(st.sampled_from([1.0, 7.5, 30.0, 90.0])),
                kind=draw(st.sampled_from(KINDS)),
                latency=draw(st.sampled_from([0.05, 0.3, 1.2, 4.0])),
                retry_after=draw(st.sampled_from([None, 0.5, 3.0, 30.0])),
                probe_ok=draw(st.sampled_from([None, True, False])),
                rate=draw(st.sampled_from([1.0, 0.5])),
            )
        )
    return found


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    models = ("primary", "secondary", "tertiary")[: draw(st.integers(2, 3))]
    at = 0.0
    calls = []
    for _ in range(draw(st.integers(3, 30))):
        at += draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 3.0, 11.0]))
        calls.append(
            CallSpec(
                at=at,
                timeout=draw(st.sampled_from([None, None, 0.5, 2.0, 7.0])),
                # Not a round number of seconds: a caller giving up at the very instant a
                # timeout ends is a tie the log's microsecond stamps cannot order.
                cancel_after=draw(st.sampled_from([None, None, None, 0.2, 1.5, 4.3])),
            )
        )
    retry: dict[str, Any] = {
        "max_attempts": draw(st.integers(1, 4)),
        "jitter": draw(st.sampled_from(["full", "equal", "decorrelated", "none"])),
        "base_delay": draw(st.sampled_from([0.1, 0.5, 2.0])),
        "max_delay": draw(st.sampled_from([1.0, 8.0])),
        # Not a sum of the other durations: a deadline that falls on the very microsecond an
        # attempt's timeout does is a tie the log's stamps cannot order (a real process's
        # own microseconds settle it, which the log does not keep).
        "call_budget": draw(st.sampled_from([3.7, 10.3, 60.0])),
        "attempt_timeout": draw(st.sampled_from([None, 1.0, 5.0])),
        "retry_budget_ratio": draw(st.sampled_from([0.2, 0.0])),
        "retry_budget_min_per_s": draw(st.sampled_from([10.0, 0.3])),
        "max_total_attempts": draw(st.sampled_from([None, 2, 4])),
        "error_actions": draw(
            st.sampled_from([{}, {"timeout": "retry"}, {"content_filter": "failover"}])
        ),
    }
    degraded = draw(st.integers(1, 2))
    health = {
        "degraded_after": degraded,
        "unhealthy_after": draw(st.integers(degraded, 4)),
        # Not a multiple of the calls' spacing: a trial due on the very instant a call starts
        # is a tie that float rounding of the log's own times decides (1.0 after 3.1 is 4.1
        # or a hair more), with no true answer in the log.
        "trial_after": draw(st.sampled_from([0.0, 1.3, 5.3])),
        "trial_calls": draw(st.sampled_from([0, 1])),
    }
    actions = [
        Action(
            at=draw(st.floats(0, at + 1)),
            model_id=draw(st.sampled_from(models)),
            on=draw(st.booleans()),
            other_writer=draw(st.booleans()),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    restarts = [
        Restart(at=draw(st.floats(0.5, at + 1)), retry_policy={"max_attempts": 2})
        for _ in range(draw(st.integers(0, 1)))
    ]
    # Either the process's clock reads what the replay's does (no offset from the wall clock,
    # no time spent between events), so that even ties to the last bit come out alike; or it
    # is a real process's: offset, microseconds spent between events, arrivals not round
    # numbers. (A decision that turns on a bit of rounding, a trial exactly 1.0 s after a
    # failure, has no true answer in the log; a real process never meets one.)
    exact = draw(st.booleans())
    work = 0.0 if exact else 20e-6
    return Scenario(
        models=models,
        spells={m: draw(spells(at + 1)) for m in models},
        calls=calls,
        retry_policy=retry,
        health_policy=health,
        probe_every=draw(st.sampled_from([None, 5.0, 20.0])),
        actions=actions,
        restarts=restarts,
        follow_every=draw(st.sampled_from([2.0, 10.0])),
        clock_offset=0.0 if exact else draw(st.floats(0, 10_000)),
        seed=draw(st.integers(0, 2**16)),
        usage=draw(st.booleans()),
        work=work,
        arrival_jitter=0.0 if exact else 0.1,
    )


def replayed(
    scenario: Scenario, open_store: Callable[[], EventStore], backend: str
) -> tuple[list[Event], WhatIf]:
    anyio.run(record_scenario, scenario, open_store)
    store = open_store()
    try:
        events = list(store.read())
    finally:
        store.close()
    change = Change(retry_policy={"max_attempts": 1})
    result = anyio.run(lambda: what_if(events, change, strict=False), backend=backend)
    return events, result


def check(events: list[Event], result: WhatIf) -> None:
    calibration = result.report.calibration
    calls = sum(e.type == "call_started" for e in events)
    assert calibration.calls == calls
    assert calibration.ok, calibration.mismatches[:2]


_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_counter = itertools.count()


@_SETTINGS
@given(scenario=scenarios(), backend=st.sampled_from(["asyncio", "trio"]))
def test_calibration_holds_on_random_fault_scripts_sqlite(
    tmp_path: Path, scenario: Scenario, backend: str
) -> None:
    path = tmp_path / f"log-{next(_counter)}.sqlite3"
    check(*replayed(scenario, lambda: SQLiteEventStore(path, durability="buffered"), backend))


@settings(_SETTINGS, max_examples=8)
@given(scenario=scenarios(), backend=st.sampled_from(["asyncio", "trio"]))
def test_calibration_holds_on_random_fault_scripts_postgres(
    pg_url: str, scenario: Scenario, backend: str
) -> None:
    from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415 - optional
        PostgresEventStore,
    )

    schema = f"whatif{next(_counter)}"

    def open_store() -> EventStore:
        return PostgresEventStore(pg_url, schema=schema, durability="buffered")

    check(*replayed(scenario, open_store, backend))
