"""Time expressions for the command line: ISO-8601 instants and relative forms.

Accepted: ``now``; a signed duration relative to now (``-15m``, ``-2h``, ``-1h30m``, ``-90s``,
``-1d``, ``+5m``; units ``s``, ``m``, ``h``, ``d``, ``w``); an ISO-8601 date or date-time
(``2024-05-01``, ``2024-05-01T03:12``, ``2024-05-01 03:12:00Z``, ``...+02:00``); a bare clock
time (``03:12``, ``03:12:45``), the most recent such instant: today's, or yesterday's when
today's is still to come (at 3 a.m. "what happened at 23:50" means last night). A time without
an offset is UTC, like every time in the event log. Instants outside years 1 to 9999 (UTC) are
refused with a ``TimeExpressionError``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_RELATIVE: Final = re.compile(r"^([+-])\s*((?:\d+(?:\.\d+)?\s*[smhdw]\s*)+)$")
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_CLOCK: Final = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?z?$")
HINT: Final = (
    "use ISO-8601 (2024-05-01T03:12:00Z), a clock time (03:12, UTC), "
    "a relative time (-15m, -2h, -1d) or now"
)


class TimeExpressionError(ValueError):
    """A time expression that is neither ISO-8601, relative nor ``now``."""


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """The instant ``text`` names, timezone-aware in UTC.

    ``now`` anchors relative forms and clock times (default: the current time). Raises
    ``TimeExpressionError`` with a one-line message naming the accepted forms, or saying that
    the instant is out of range.
    """
    anchor = (now if now is not None else datetime.now(UTC)).astimezone(UTC)
    cleaned = text.strip().lower()
    try:
        if cleaned == "now":
            return anchor
        relative = _RELATIVE.match(cleaned)
        if relative:
            return _relative(anchor, *relative.groups())
        clock = _CLOCK.match(cleaned)
        if clock:
            return _most_recent(anchor, _clock_time(text, *clock.groups()))
        return _parse_iso(text.strip())
    except OverflowError:
        # Python's datetime ends at years 1 and 9999; a shift to UTC can cross either end.
        raise TimeExpressionError(
            f"time {text.strip()!r} is out of range: years 1 to 9999 (UTC) only"
        ) from None


def _relative(anchor: datetime, sign: str, body: str) -> datetime:
    seconds = sum(float(value) * _UNITS[unit] for value, unit in _PART.findall(body))
    delta = timedelta(seconds=seconds)
    return anchor + delta if sign == "+" else anchor - delta


def _clock_time(
    text: str, hour: str, minute: str, second: str | None, fraction: str | None
) -> time:
    micro = int((fraction or "").ljust(6, "0"))
    try:
        return time(int(hour), int(minute), int(second or 0), micro, tzinfo=UTC)
    except ValueError:
        raise TimeExpressionError(f"bad time expression {text.strip()!r}: {HINT}") from None


def _most_recent(anchor: datetime, clock: time) -> datetime:
    """The latest instant at or before ``anchor`` whose UTC clock reads ``clock``."""
    today = datetime.combine(anchor.date(), clock)
    return today if today <= anchor else today - timedelta(days=1)


def _parse_iso(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimeExpressionError(f"bad time expression {text!r}: {HINT}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
