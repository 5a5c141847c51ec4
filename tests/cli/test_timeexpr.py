"""Time expressions: ISO-8601, relative forms and ``now``, always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from devs.risks.multi_model_failover.adapters.cli.timeexpr import (
    TimeExpressionError,
    log_text,
    parse_time,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        (" NOW ", NOW),
        ("-15m", NOW - timedelta(minutes=15)),
        ("-2h", NOW - timedelta(hours=2)),
        ("-1h30m", NOW - timedelta(minutes=90)),
        ("-90s", NOW - timedelta(seconds=90)),
        ("-1.5h", NOW - timedelta(minutes=90)),
        ("-1d", NOW - timedelta(days=1)),
        ("-1w", NOW - timedelta(weeks=1)),
        ("+5m", NOW + timedelta(minutes=5)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T03:12", datetime(2024, 5, 1, 3, 12, tzinfo=UTC)),
        ("2024-05-01 03:12:09Z", datetime(2024, 5, 1, 3, 12, 9, tzinfo=UTC)),
        ("2024-05-01T05:12:09+02:00", datetime(2024, 5, 1, 3, 12, 9, tzinfo=UTC)),
        ("2024-05-01T03:12:09.250", datetime(2024, 5, 1, 3, 12, 9, 250_000, tzinfo=UTC)),
    ],
)
def test_accepted_forms(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "15m", "-15", "-15 parsecs", "2024-13-01"])
def test_refused_forms_say_what_is_accepted(text: str) -> None:
    with pytest.raises(TimeExpressionError, match=r"bad time expression .*ISO-8601.*-15m"):
        parse_time(text, now=NOW)


def test_relative_to_the_current_time_by_default() -> None:
    before = datetime.now(UTC)
    parsed = parse_time("-1m")
    assert before - timedelta(minutes=1, seconds=5) <= parsed <= datetime.now(UTC)


def test_log_text_sorts_like_the_stored_at_column() -> None:
    local = datetime(2024, 5, 1, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    assert log_text(local) == "2024-05-01T03:00:00.000000+00:00"
