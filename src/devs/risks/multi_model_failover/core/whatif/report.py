"""The what-if's report: calibration first, then the recorded run and the what-if side by side.

``WhatIfReport`` is plain data (msgspec; ``--format json`` is its encoding). Times are UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from .change import Change
from .tally import CallResult, Side, Timeline

LISTED: Final = 50  # changed calls and mismatches listed by name (all are counted)


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    """A call the calibration replay did not reproduce: what the log says, what the replay
    did."""

    call_id: str
    at: datetime
    recorded: str
    replayed: str


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """The recorded policy replayed: ``ok`` when every call of the window came out as
    recorded (outcome, serving model or failure reason, attempts one by one, failovers)."""

    ok: bool
    calls: int
    mismatched: int
    mismatches: list[Mismatch] = []


class ChangedCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call whose outcome the what-if changes."""

    call_id: str
    at: datetime
    recorded: str
    what_if: str


class Inferred(msgspec.Struct, frozen=True, kw_only=True):
    """What the what-if's answers came from: ``answers`` of ``of`` were inferred (the log did
    not observe that moment), ``attempts`` and ``probes`` of them; ``backoff_draws``: random
    draws the log never made; ``retry_after``: backoffs that waited on a Retry-After the log
    did not show (the model's nearest known one)."""

    answers: int
    of: int
    attempts: int
    probes: int
    backoff_draws: int
    retry_after: int


class WhatIfReport(msgspec.Struct, frozen=True, kw_only=True):
    """The whole answer. ``since``/``until``: the window asked (None: open); ``replayed_from``:
    the engine start the replay began at (the window's calls depend on what came before)."""

    since: datetime | None
    until: datetime | None
    replayed_from: datetime
    first_call: datetime | None  # the first and last starts of the window's calls
    last_call: datetime | None
    change: Change
    calibration: Calibration
    recorded: Side
    what_if: Side
    changed_calls: int
    changed: list[ChangedCall]
    served_elsewhere: int
    inferred: Inferred


class WhatIf:
    """``what_if``'s result: the ``report`` and each side's ``Timeline`` (for the HTML page)."""

    def __init__(self, report: WhatIfReport, recorded: Timeline, what_if: Timeline) -> None:
        self.report = report
        self.recorded = recorded
        self.what_if = what_if


class CalibrationError(Exception):
    """The recorded policy, replayed, did not reproduce the log: the what-if cannot be trusted.
    ``result`` holds the whole answer (its report's ``calibration`` says which calls)."""

    def __init__(self, result: WhatIf) -> None:
        calibration = result.report.calibration
        first = calibration.mismatches[0] if calibration.mismatches else None
        detail = (
            f"; first: call {first.call_id} recorded {first.recorded}, replayed {first.replayed}"
            if first is not None
            else ""
        )
        super().__init__(
            f"calibration failed: {calibration.mismatched} of {calibration.calls} call(s) came "
            f"out otherwise when the recorded policy was replayed{detail}"
        )
        self.result = result


def calibrate(recorded: dict[str, CallResult], replayed: dict[str, CallResult]) -> Calibration:
    """Compare the recorded calls with the replay of the recorded policy, call by call."""
    mismatches: list[Mismatch] = []
    count = 0
    for call_id, want in recorded.items():
        got = replayed.get(call_id)
        if got is not None and got.key() == want.key():
            continue
        count += 1
        if len(mismatches) < LISTED:
            mismatches.append(
                Mismatch(
                    call_id=call_id,
                    at=want.at,
                    recorded=want.describe(),
                    replayed="not replayed" if got is None else got.describe(),
                )
            )
    return Calibration(ok=count == 0, calls=len(recorded), mismatched=count, mismatches=mismatches)


def changes(
    recorded: dict[str, CallResult], what_if: dict[str, CallResult]
) -> tuple[int, list[ChangedCall], int]:
    """The calls whose outcome changes (succeeded, failed, no outcome), the first of them,
    and how many calls that succeeded either way were served by another model."""
    changed: list[ChangedCall] = []
    count = elsewhere = 0
    for call_id, was in recorded.items():
        now = what_if.get(call_id)
        if now is None:
            continue
        if _status(was) != _status(now):
            count += 1
            if len(changed) < LISTED:
                changed.append(
                    ChangedCall(
                        call_id=call_id, at=was.at, recorded=was.outcome(), what_if=now.outcome()
                    )
                )
        elif was.status == "succeeded" and was.model != now.model:
            elsewhere += 1
    return count, changed, elsewhere


def _status(result: CallResult) -> str:
    return "none" if result.status in ("open", "cancelled") else result.status
