"""Time expressions for the command line: ISO-8601 instants and relative forms.

Accepted: ``now``; a signed duration relative to now (``-15m``, ``-2h``, ``-1h30m``, ``-90s``,
``-1d``, ``+5m``; units ``s``, ``m``, ``h``, ``d``, ``w``); an ISO-8601 date or date-time
(``2024-05-01``, ``2024-05-01T03:12``, ``2024-05-01 03:12:00Z``, ``...+02:00``). A time
without an offset is UTC, like every time in the event log.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_RELATIVE: Final = re.compile(r"^([+-])\s*((?:\d+(?:\.\d+)?\s*[smhdw]\s*)+)$")
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
HINT: Final = "use ISO-8601 (2024-05-01T03:12:00Z), a relative time (-15m, -2h, -1d) or now"


class TimeExpressionError(ValueError):
    """A time expression that is neither ISO-8601, relative nor ``now``."""


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """The instant ``text`` names, timezone-aware in UTC.

    ``now`` anchors relative forms (default: the current time). Raises
    ``TimeExpressionError`` with a one-line message naming the accepted forms.
    """
    anchor = now if now is not None else datetime.now(UTC)
    cleaned = text.strip().lower()
    if cleaned == "now":
        return anchor.astimezone(UTC)
    relative = _RELATIVE.match(cleaned)
    if relative:
        sign, body = relative.groups()
        seconds = sum(float(value) * _UNITS[unit] for value, unit in _PART.findall(body))
        delta = timedelta(seconds=seconds)
        return (anchor + delta if sign == "+" else anchor - delta).astimezone(UTC)
    return _parse_iso(text.strip())


def _parse_iso(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimeExpressionError(f"bad time expression {text!r}: {HINT}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def log_text(instant: datetime) -> str:
    """``instant`` as the event log stores ``at`` (UTC, microseconds), for SQL comparisons."""
    return instant.astimezone(UTC).isoformat(timespec="microseconds")
