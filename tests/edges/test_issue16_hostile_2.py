"""Hostile tests for issue 16, second pass: the first pass's fixes under pressure.

Logs are recorded the way users make them (``record`` of the first pass: a real
``FailoverEngine``, scripted clients, virtual time, a real SQLite file; or ``record_scenario``
of the what-if tests where another process writes operator actions) and replayed.

The tests above "what held up" show defects and fail on the code they were written against:
streams whose answer outlasts the caller's timeout, rescued streams whose rescue failed, a
stream rescued close to its deadline, and maintenance (recorded or added) on a model the
running engine does not have but the next one does. Those below guard what held.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.whatif.scenario import Action, CallSpec, Restart, Scenario, Spell, record_scenario

from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.core.whatif import Change, MaintenanceWindow, what_if
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from . import test_issue16_hostile as first
from .test_issue16_hostile import START, Answer, Caller, Script, record, replayed, secondary_load

pytestmark = pytest.mark.anyio


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def attempts(side: object, model_id: str) -> int:
    figures = side.by_model.get(model_id)  # type: ignore[attr-defined]
    return 0 if figures is None else int(figures.attempts)


# -- streams -----------------------------------------------------------------------------------


async def test_a_healthy_stream_longer_than_its_callers_timeout_calibrates(
    tmp_path: Path,
) -> None:
    """The docs: a stream's ``timeout`` bounds its first chunk; after it only
    ``idle_timeout`` holds. A stream with ``timeout=1.0`` whose answer takes 1.6 s (first
    chunk at 0.4 s) succeeds. The log does not say it was a stream; the replay runs it as a
    call, whose deadline bounds the whole answer: every such stream "fails (deadline)" and the
    recorded run does not calibrate. (The same with a ``call_budget`` shorter than a long
    answer: any long stream.) The log shows it: the attempt succeeded after the deadline."""
    script = Script(
        callers=[Caller(at=i * 2.0 + 0.013, stream=True, timeout=1.0) for i in range(5)],
        latency=1.6,
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.recorded.calls_succeeded == 5
    assert result.report.calibration.ok, result.report.calibration.mismatches[:2]


async def test_a_rescued_stream_whose_rescue_failed_calibrates(tmp_path: Path) -> None:
    """``recovery="restart"``: the primary broke after its first chunk, the secondary (the
    rescue) failed before its first, was retried (``max_attempts: 2``) and failed again; the
    call ends ``stream_interrupted``. The replay fails the call at the primary's break,
    without the rescue: ``call_failed(stream_interrupted)`` resets the call's recovery to
    "none" over the "restart" the primary's attempt had shown."""
    script = Script(
        answers={
            "primary": [Answer(0, 100, kind="server", break_after_chunks=1, latency=0.1)],
            "secondary": [Answer(0, 100, kind="server", latency=0.1)],
        },
        callers=[Caller(at=1.013, stream=True, recovery="restart")],
        retry_policy={"jitter": "none", "max_attempts": 2},
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.recorded.by_model["secondary"].attempts == 2
    assert result.report.calibration.ok, result.report.calibration.mismatches[:2]


async def test_a_what_if_never_retries_the_model_whose_stream_broke(tmp_path: Path) -> None:
    """Recorded with ``max_attempts: 1``: the primary broke after its first chunk, the
    secondary (``recovery="restart"``) failed before its first. With ``max_attempts: 3`` the
    engine never tries the primary again in that call ("a client is never tried twice in one
    call"): the secondary gets three attempts. The what-if retries the primary three times
    and the secondary once: the primary's break is read as an ordinary failure (only a break
    the policy would have retried is recognised), and the secondary's failure before any
    chunk is marked as the break, from ``call_failed(stream_interrupted)``; the attempt's own
    message says "stream from primary broke after 1 chunk(s)"."""
    script = Script(
        answers={
            "primary": [Answer(0, 100, kind="server", break_after_chunks=1, latency=0.1)],
            "secondary": [Answer(0, 100, kind="server", latency=0.1)],
        },
        callers=[Caller(at=1.013, stream=True, recovery="restart")],
        retry_policy={"jitter": "none", "max_attempts": 1},
    )
    result = await replayed(
        tmp_path / "log.sqlite3", script, Change(retry_policy={"max_attempts": 3})
    )
    report = result.report
    assert report.calibration.ok
    assert attempts(report.what_if, "primary") == 1, "the broken stream's model was retried"
    assert attempts(report.what_if, "secondary") == 3


async def test_a_stream_rescued_near_its_deadline_calibrates(tmp_path: Path) -> None:
    """A stream with ``timeout=1.1`` (``recovery="restart"``): the primary delivers chunks
    from 0.4 s and breaks at 1.2 s (past the timeout, which bounds only the first chunk);
    the secondary rescues it. The replay has the primary's attempt cut by the deadline:
    ``_gave_up_in_time`` recognises a mid-stream break only when the longest backoff would
    have fitted the deadline, here it would not (1.2 s + 0.5 s > 1.1 s), and the attempt is
    replayed as a call's."""
    script = Script(
        answers={"primary": [Answer(0, 100, kind="server", break_after_chunks=2, latency=1.6)]},
        callers=[Caller(at=1.013, stream=True, recovery="restart", timeout=1.1)],
        retry_policy={"jitter": "none"},
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.recorded.calls_succeeded == 1
    assert result.report.calibration.ok, result.report.calibration.mismatches[:2]


# -- maintenance on a model the running engine does not have ---------------------------------


async def _scenario_events(path: Path, scenario: Scenario) -> list[Event]:
    await record_scenario(scenario, lambda: SQLiteEventStore(path, durability="buffered"))
    with SQLiteEventStore(path, create=False) as store:
        return list(store.read())


async def test_another_processs_action_on_a_model_the_engine_lacks_calibrates(
    tmp_path: Path,
) -> None:
    """The engine of 10.5 s runs the primary alone; at 15 s `failover maintenance secondary
    --on` (another process) writes to the log; the engine of 20.5 s runs both and reads the
    secondary in maintenance: its calls fail on the primary alone. The replay drops the
    action (``Replay._operator`` acts only on the running engine's registry and writes the
    log only when no engine runs): the last engine sends nine calls to the secondary."""
    scenario = Scenario(
        spells={"primary": [Spell(0, 1000, kind="server", latency=0.1, probe_ok=True)]},
        calls=[CallSpec(at=i * 1.0 + 0.017) for i in range(30)],
        retry_policy={"max_attempts": 1},
        health_policy={"degraded_after": 1000, "unhealthy_after": 1000},
        probe_every=None,
        actions=[Action(at=15.0, model_id="secondary", on=True, other_writer=True)],
        restarts=[
            Restart(at=10.5, models=("primary",)),
            Restart(at=20.5, models=("primary", "secondary")),
        ],
    )
    events = await _scenario_events(tmp_path / "log.sqlite3", scenario)
    result = await what_if(events, strict=False)
    assert result.report.calibration.ok, result.report.calibration.mismatches[:2]


async def test_a_window_holds_a_model_the_next_engine_adds(tmp_path: Path) -> None:
    """The first engine runs the primary alone; the engine of 10.5 s adds the secondary.
    ``--maintenance secondary@T+5s``: the secondary is in maintenance from 5 s to the end,
    so no call may reach it. The window opens while the running engine lacks the model, and
    the replay drops it: the second engine serves 19 calls from the secondary."""
    script = Script(
        models=("primary",),
        answers={"primary": [Answer(0, 1000, kind="server", latency=0.113)]},
        callers=[Caller(at=i * 1.0 + 0.017) for i in range(30)],
        retry_policy={"max_attempts": 1},
        health_policy={"degraded_after": 1000, "unhealthy_after": 1000},
        restarts=[(10.5, ("primary", "secondary"), {})],
    )
    events = await record(tmp_path / "log.sqlite3", script)
    change = Change(maintenance=(MaintenanceWindow(model_id="secondary", start=at(5)),))
    report = (await what_if(events, change)).report
    assert attempts(report.recorded, "secondary") == 19
    assert attempts(report.what_if, "secondary") == 0, "the window was dropped"


# -- what held up (guards) -----------------------------------------------------------------------


async def test_a_window_starting_before_since_holds_from_the_replays_start(
    tmp_path: Path,
) -> None:
    events = await record(tmp_path / "log.sqlite3", secondary_load())
    change = Change(maintenance=(MaintenanceWindow(model_id="secondary", start=at(-100)),))
    report = (await what_if(events, change, since=at(30))).report
    assert report.what_if.calls == 30
    assert attempts(report.what_if, "secondary") == 0


@pytest.mark.parametrize("reverse", [False, True])
async def test_adjacent_windows_leave_no_gap(tmp_path: Path, reverse: bool) -> None:
    events = await record(tmp_path / "log.sqlite3", secondary_load())
    windows = (
        MaintenanceWindow(model_id="secondary", start=at(10), end=at(20)),
        MaintenanceWindow(model_id="secondary", start=at(20), end=at(30)),
    )
    change = Change(maintenance=windows[::-1] if reverse else windows)
    report = (await what_if(events, change)).report
    assert attempts(report.what_if, "secondary") == 40  # calls 10..29 off it


async def test_a_longer_budget_waits_out_a_retry_after_the_recorded_one_could_not(
    tmp_path: Path,
) -> None:
    """Retry-After 20 s over a 10 s budget: the engine gave up on the primary. With a 60 s
    budget it waits (the primary's later answers inferred: rate-limited again)."""
    script = Script(
        answers={"primary": [Answer(0, 5, kind="rate_limited", retry_after=20.0, latency=0.1)]},
        callers=[Caller(at=1.013)],
        retry_policy={"max_attempts": 3, "call_budget": 10.0, "jitter": "none"},
        health_policy={"degraded_after": 1000, "unhealthy_after": 1000},
    )
    change = Change(retry_policy={"call_budget": 60.0})
    report = (await replayed(tmp_path / "log.sqlite3", script, change)).report
    assert report.calibration.ok, report.calibration.mismatches[:2]
    assert attempts(report.recorded, "primary") == 1
    assert attempts(report.what_if, "primary") == 3
    assert report.what_if.backoff_seconds >= 40.0 - 1e-6


async def test_the_callers_timeout_still_binds_under_a_longer_budget(tmp_path: Path) -> None:
    script = Script(
        models=("primary",),
        answers={"primary": [Answer(0, 100, kind="server", latency=1.0)]},
        callers=[Caller(at=1.013, timeout=2.5)],
        retry_policy={"max_attempts": 10, "call_budget": 30.0, "jitter": "none", "base_delay": 0.1},
    )
    change = Change(retry_policy={"call_budget": 300.0, "max_attempts": 20})
    report = (await replayed(tmp_path / "log.sqlite3", script, change)).report
    assert report.calibration.ok, report.calibration.mismatches[:2]
    assert attempts(report.what_if, "primary") == attempts(report.recorded, "primary")
    assert report.what_if.latency.max is not None
    assert report.what_if.latency.max <= 2.5 + 1e-3


class _Prefilling(first.Scripted):
    supports_prefill = True


async def test_a_continued_stream_with_prefill_calibrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(first, "Scripted", _Prefilling)
    script = Script(
        answers={"primary": [Answer(10, 20, kind="server", break_after_chunks=2)]},
        callers=[Caller(at=i * 2.0 + 0.013, stream=True, recovery="continue") for i in range(20)],
        retry_policy={"jitter": "none"},
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.calibration.ok, result.report.calibration.mismatches[:2]


@pytest.mark.parametrize(
    "change",
    [
        Change(retry_policy={"max_attempts": 3}),
        Change(retry_policy={"call_budget": 0.9}),
        Change(maintenance=(MaintenanceWindow(model_id="primary", start=at(12), end=at(16)),)),
    ],
)
async def test_calls_and_streams_mixed_calibrate(tmp_path: Path, change: Change) -> None:
    """Breaks before the first chunk and after it, rate limits, caller timeouts (longer than
    the answers) and cancellations, calls and streams of every recovery."""
    script = Script(
        answers={
            "primary": [
                Answer(5, 12, kind="server", break_after_chunks=0),
                Answer(12, 20, kind="server", break_after_chunks=1),
                Answer(20, 25, kind="rate_limited", retry_after=0.7),
            ]
        },
        callers=[
            Caller(
                at=i * 0.7 + 0.013,
                stream=i % 2 == 0,
                recovery=(None, "restart", None)[i % 3],
                timeout=(None, 2.3)[i % 2],
                cancel_after=(None, None, None, None, 0.61)[i % 5],
            )
            for i in range(40)
        ],
        retry_policy={"jitter": "full"},
        probes_at=[3.3, 13.3, 23.3],
    )
    report = (await replayed(tmp_path / "log.sqlite3", script, change)).report
    assert report.calibration.ok, report.calibration.mismatches[:2]
