"""What if: replay a recorded incident under another policy.

``await what_if(events, change)`` reads the recorded run from ``events`` (the log from the
engine start in force when the window opens; see ``record``), then runs every recorded call
again, in order and at its recorded start, through the real engine on virtual time
(``simclock``), against a model of the world built from the log (``world``):

1. **Calibration**: the recorded configuration replayed must reproduce the recorded calls,
   attempts, failovers and outcomes exactly, call by call (``report.calibrate``).
2. **The what-if**: the same, under ``change`` (policies, order, clients taken away, operator
   actions added).

The report (``WhatIfReport``) puts the two sides next to each other over the window's calls,
lists the calls whose outcome changes, and counts the answers that came from inference.

A calibration that fails raises ``CalibrationError`` (which carries the whole result) unless
``strict=False``: then the report says so (``report.calibration.ok``) and the caller decides.

What the recorded run shows that no policy decides, and how the replay keeps it: when each call
started and how long its caller waited (its own timeout, when the log shows it reached; its
cancellation, at the recorded instant); when each probe ran (replayed as recorded, unless the
what-if changes the probe interval); when operators acted (taken in when the recorded engine
took them in); the random draws behind backoffs and the retry budget's answers (from the log
where the engine asks the same question); in-process state (the replay starts at the engine
start, so retry budget, trial calls and probe schedules build up as they did). The caller's
per-call timeout is not recorded: a call that never reached it runs under the policy's
``call_budget``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ..events import Event
from ..projections import Snapshot
from .change import Change, MaintenanceWindow
from .recording import Recording, record
from .replay import Replay
from .report import (
    Calibration,
    CalibrationError,
    ChangedCall,
    Inferred,
    Mismatch,
    WhatIf,
    WhatIfReport,
    calibrate,
    changes,
)
from .tally import Latency, ModelFigures, Side, Tally, Timeline
from .world import World

__all__ = [
    "Calibration",
    "CalibrationError",
    "Change",
    "ChangedCall",
    "Inferred",
    "Latency",
    "MaintenanceWindow",
    "Mismatch",
    "ModelFigures",
    "Recording",
    "Side",
    "Timeline",
    "WhatIf",
    "WhatIfReport",
    "record",
    "what_if",
]


async def what_if(
    events: Iterable[Event],
    change: Change | None = None,
    *,
    initial: Snapshot | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    strict: bool = True,
) -> WhatIf:
    """Replay the recorded calls of ``events`` under ``change``; see the module docstring.

    ``events``: oldest first, starting at (or before) the engine start in force at ``since``;
    ``initial``: the fold of the log before them (states, maintenance). The report covers the
    calls that started between ``since`` and ``until`` (None: open ends). Raises
    ``ValueError`` naming what is wrong (no engine start in ``events``, a model id the log does
    not know, a time without a timezone) and ``CalibrationError`` (see above).
    """
    change = change if change is not None else Change()
    _check_aware("since", since)
    _check_aware("until", until)
    for window in change.maintenance:
        _check_aware(f"the maintenance window of {window.model_id} (start)", window.start)
        _check_aware(f"the maintenance window of {window.model_id} (end)", window.end)
    rec = record(events, initial=initial, since=since, until=until)
    change.check_models(list(rec.models))
    for run in rec.engines:  # a key valid alone may not be over a recorded policy
        try:
            change.retry(run.retry_raw)
            change.health(run.health_raw)
        except ValueError as exc:
            raise ValueError(
                f"the what-if's policy over the one recorded at "
                f"{rec.instant(run.start).isoformat()}: {exc}"
            ) from None
    return await replay(rec, change, strict=strict)


def _check_aware(name: str, at: datetime | None) -> None:
    """``ValueError`` naming ``name`` unless ``at`` is None or has a timezone: the log's times
    are UTC, and a naive time could mean any zone."""
    if at is not None and at.utcoffset() is None:
        raise ValueError(f"{name}: {at.isoformat()} has no timezone (give one, e.g. UTC)")


async def replay(rec: Recording, change: Change, *, strict: bool = True) -> WhatIf:
    """``what_if`` from a ``Recording`` already read."""
    world = World(rec)
    recorded = rec.tally
    calibration_run = await _side(rec, world, Change(), calibrate=True)
    calibration = calibrate(recorded.calls, calibration_run.calls)
    if change.empty:
        result_run, inferred = calibration_run, _inferred(world)
    else:
        result_run = await _side(rec, world, change, calibrate=False)
        inferred = _inferred(world)
    count, changed, elsewhere = changes(recorded.calls, result_run.calls)
    report = WhatIfReport(
        since=rec.since,
        until=rec.until,
        replayed_from=rec.instant(rec.engines[0].start),
        first_call=min((c.at for c in recorded.calls.values()), default=None),
        last_call=max((c.at for c in recorded.calls.values()), default=None),
        change=change,
        calibration=calibration,
        recorded=recorded.figures(),
        what_if=result_run.figures(),
        changed_calls=count,
        changed=changed,
        served_elsewhere=elsewhere,
        inferred=inferred,
    )
    result = WhatIf(report, recorded.timeline, result_run.timeline)
    if strict and not calibration.ok:
        raise CalibrationError(result)
    return result


async def _side(rec: Recording, world: World, change: Change, *, calibrate: bool) -> Tally:
    """Run one replay and tally its events over the window's calls."""
    events = await Replay(rec, world, change, calibrate=calibrate).run()
    usage = world.usage
    tally = Tally(
        since=rec.since,
        until=rec.until,
        covered=rec.covered,
        decide=False,
        usage=lambda e: usage.get((e.call_id, e.model_id, e.attempt), (None, None, None)),
        initial=rec.initial,
    )
    for event in events:
        tally.add(event)
    return tally


def _inferred(world: World) -> Inferred:
    return Inferred(
        answers=world.inferred_attempts + world.inferred_probes,
        of=world.answers,
        attempts=world.inferred_attempts,
        probes=world.inferred_probes,
        backoff_draws=world.inferred_draws,
        retry_after=world.inferred_retry_after,
    )
