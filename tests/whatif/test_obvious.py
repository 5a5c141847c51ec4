"""Recorded runs whose what-if answer is obvious: the replay must find it.

Twenty minutes of calls, one every five seconds; for ten minutes the primary fails every call
(503 after 0.3 s) while its health endpoint still answers, so it stays in rotation and each
call spends three attempts and two backoffs on it before the secondary serves it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from devs.risks.multi_model_failover.core.whatif import Change, MaintenanceWindow, what_if

from .conftest import record_to
from .scenario import START, CallSpec, Scenario, Spell

pytestmark = pytest.mark.anyio

OUTAGE = (300.0, 900.0)
SINCE = START + timedelta(seconds=OUTAGE[0])
UNTIL = START + timedelta(seconds=OUTAGE[1] - 1)


def outage() -> Scenario:
    return Scenario(
        models=("primary", "secondary"),
        spells={"primary": [Spell(*OUTAGE, kind="server", latency=0.3, probe_ok=True)]},
        calls=[CallSpec(at=i * 5.0) for i in range(240)],
        retry_policy={"max_attempts": 3, "jitter": "none", "base_delay": 1.0},
        health_policy={"degraded_after": 1000, "unhealthy_after": 1000},
    )


async def test_one_attempt_each_serves_the_same_calls_sooner(tmp_path: Path) -> None:
    events = await record_to(tmp_path / "log.sqlite3", outage())
    result = await what_if(
        events, Change(retry_policy={"max_attempts": 1}), since=SINCE, until=UNTIL
    )
    report = result.report
    assert report.calibration.ok, report.calibration.mismatches[:1]
    recorded, after = report.recorded, report.what_if
    # 120 calls in the outage: 3 failed attempts on the primary, then the secondary.
    assert recorded.calls == after.calls == 120
    assert recorded.calls_succeeded == after.calls_succeeded == 120
    assert recorded.attempts == 480
    assert after.attempts == 240
    assert recorded.by_model["primary"].attempts == 360
    assert after.by_model["primary"].attempts == 120
    assert (recorded.retries, after.retries) == (240, 0)
    assert recorded.backoff_seconds == pytest.approx(360.0)  # 1 s + 2 s per call
    assert after.backoff_seconds == 0
    assert after.latency.max is not None
    assert recorded.latency.p50 is not None
    assert after.latency.max < recorded.latency.p50  # every call is faster than most were
    assert report.changed_calls == 0
    assert report.served_elsewhere == 0


async def test_the_primary_in_maintenance_from_the_outage_is_never_called(
    tmp_path: Path,
) -> None:
    events = await record_to(tmp_path / "log.sqlite3", outage())
    change = Change(maintenance=(MaintenanceWindow(model_id="primary", start=SINCE),))
    report = (await what_if(events, change, since=SINCE, until=UNTIL)).report
    assert report.calibration.ok
    assert report.recorded.by_model["primary"].attempts == 360
    assert "primary" not in report.what_if.by_model  # no call touched it
    assert report.what_if.attempts == report.what_if.by_model["secondary"].attempts == 120
    assert report.what_if.calls_succeeded == 120
    assert report.what_if.failovers == 0


async def test_without_the_secondary_the_outage_fails_its_calls(tmp_path: Path) -> None:
    events = await record_to(tmp_path / "log.sqlite3", outage())
    report = (await what_if(events, Change(without=("secondary",)))).report
    assert report.calibration.ok
    assert report.recorded.calls_failed == 0
    assert report.what_if.calls_failed == 120  # those of the outage, and only those
    assert report.changed_calls == 120
    assert all(c.what_if.startswith("failed (exhausted") for c in report.changed)
    assert report.inferred.answers == 0  # every attempt left is one the log saw


async def test_the_secondary_first_takes_the_load_off_the_primary(tmp_path: Path) -> None:
    events = await record_to(tmp_path / "log.sqlite3", outage())
    report = (await what_if(events, Change(order=("secondary",)))).report
    assert report.what_if.by_model["secondary"].attempts == 240
    assert "primary" not in report.what_if.by_model
    # The log saw the secondary answer only seconds into a call, never at its start: every
    # answer it gives now is inferred (the recorded probes replay as they were).
    assert report.inferred.attempts == report.inferred.answers == 240
    assert report.inferred.of == 240 + report.recorded.probes
    assert report.what_if.calls_succeeded == 240
