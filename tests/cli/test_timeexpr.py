"""Time expressions: ISO-8601, relative forms and ``now``, always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devs.risks.multi_model_failover.adapters.cli.timeexpr import (
    TimeExpressionError,
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


@pytest.mark.parametrize(
    "text",
    [
        "-999999999d",
        "+999999999w",
        "-99999999999999999999999999s",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        f"-{'9' * 400}d",
    ],
)
def test_out_of_range_times_are_one_clear_error(text: str) -> None:
    with pytest.raises(TimeExpressionError, match=r"out of range") as raised:
        parse_time(text, now=NOW)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("03:12", datetime(2024, 5, 1, 3, 12, tzinfo=UTC)),
        ("03:12:45", datetime(2024, 5, 1, 3, 12, 45, tzinfo=UTC)),
        ("3:12", datetime(2024, 5, 1, 3, 12, tzinfo=UTC)),
        ("11:59:59.5", datetime(2024, 5, 1, 11, 59, 59, 500_000, tzinfo=UTC)),
        ("12:00", NOW),
        # Later than now today: the most recent one is yesterday's.
        ("12:00:01", datetime(2024, 4, 30, 12, 0, 1, tzinfo=UTC)),
        ("23:30", datetime(2024, 4, 30, 23, 30, tzinfo=UTC)),
        ("00:00", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_a_bare_clock_time_is_its_most_recent_past_instant(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["24:00", "03:60", "03:12:61", "003:12", "03:1"])
def test_impossible_clock_times_are_refused(text: str) -> None:
    with pytest.raises(TimeExpressionError, match=r"bad time expression"):
        parse_time(text, now=NOW)


def test_a_clock_time_on_the_first_day_does_not_overflow() -> None:
    first = datetime(1, 1, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(TimeExpressionError, match=r"out of range"):
        parse_time("23:00", now=first)
