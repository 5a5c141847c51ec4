"""``seq_stamped``: the seq bounds of an instant, exact whatever order the stamps are in.

Writers' clocks disagree, so a log's ``at`` is not sorted by ``seq``; the point-in-time
commands still need the highest seq stamped at or before an instant (and the lowest at or
after one). The query reads the side of the instant with fewer rows: both sides are checked
here against a plain reading of every row, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover.adapters.cli.queries import seq_stamped
from devs.risks.multi_model_failover.core.events import HealthProbe
from devs.risks.multi_model_failover.storage import GroupCommitStore
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GroupCommitStore]:
    opened: GroupCommitStore
    if request.param == "sqlite":
        opened = SQLiteEventStore(tmp_path / "log.sqlite3", durability="buffered")
    else:
        pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
        from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
            PostgresEventStore,
        )

        opened = PostgresEventStore(request.getfixturevalue("pg_url"), lock_timeout=10.0)
    yield opened
    opened.close()


def write(store: GroupCommitStore, minutes: list[int]) -> list[tuple[int, datetime]]:
    """One event per entry, stamped ``T0 + minutes``, in order; (seq, at) of each."""
    first = store.last_seq() + 1
    for minute in minutes:
        store.append(
            HealthProbe(at=T0 + timedelta(minutes=minute), model_id="m", ok=True, latency=0.0)
        )
    assert store.flush()
    return [(first + n, T0 + timedelta(minutes=m)) for n, m in enumerate(minutes)]


def expected(rows: list[tuple[int, datetime]], instant: datetime, *, last: bool) -> Any:
    if last:
        return max((seq for seq, at in rows if at <= instant), default=None)
    return min((seq for seq, at in rows if at >= instant), default=None)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # Mostly rising stamps with some that jump back or ahead (a writer's clock off).
    steps=st.lists(st.integers(min_value=-30, max_value=10), min_size=1, max_size=60),
    probes=st.lists(st.integers(min_value=-200, max_value=400), min_size=1, max_size=8),
)
def test_the_bounds_of_an_instant_are_exact_on_either_side(
    store: GroupCommitStore, steps: list[int], probes: list[int]
) -> None:
    minutes, now = [], 0
    for step in steps:
        now += step
        minutes.append(now)
    rows = [(seq, at) for seq, at in write(store, minutes)]
    every = [(e.seq, e.at) for e in store.read()]
    for minute in probes:
        instant = T0 + timedelta(minutes=minute)
        for last in (True, False):
            assert seq_stamped(store, instant, last=last) == expected(every, instant, last=last)
    assert rows[-1][0] == every[-1][0]


def test_an_out_of_order_stamp_is_found_from_either_end(store: GroupCommitStore) -> None:
    # seq 2 is stamped late, seq 9 early: the nearest stamp is not the answer.
    rows = write(store, [0, 500, 2, 3, 4, 5, 6, 7, -100, 9])
    assert seq_stamped(store, T0 + timedelta(minutes=1), last=True) == 9
    assert seq_stamped(store, T0 + timedelta(minutes=8), last=False) == 2
    assert seq_stamped(store, T0 + timedelta(minutes=600), last=False) is None
    assert seq_stamped(store, T0 - timedelta(minutes=600), last=True) is None
    assert rows[0][0] == 1
