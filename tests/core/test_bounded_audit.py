"""The fold's audit trail keeps its last ``AUDIT_KEPT`` entries: a snapshot's size (and so an
engine start and every stored snapshot) does not grow with the log's age, while
``failover audit`` still lists every entry the log holds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from devs.risks.multi_model_failover import SQLiteEventStore, replay
from devs.risks.multi_model_failover.adapters.cli.commands import app
from devs.risks.multi_model_failover.adapters.cli.tables import rows_of
from devs.risks.multi_model_failover.core.events import (
    EngineStarted,
    Event,
    Maintenance,
    StateChanged,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.projections import AUDIT_KEPT, fold

from .fakes import FakeModelClient, always, engine

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def toggles(count: int, model_id: str = "b", start: int = 0) -> list[Event]:
    """``count`` maintenance actions on ``model_id``, on and off in turn, a second apart."""
    return [
        Maintenance(
            at=T0 + timedelta(seconds=start + n),
            model_id=model_id,
            on=n % 2 == 0,
            reason=f"action {n:06d}",
            by="bot",
        )
        for n in range(count)
    ]


def history(count: int) -> list[Event]:
    started = EngineStarted(at=T0 - timedelta(seconds=1), models=("a", "b"))
    alice = Maintenance(at=T0, model_id="a", on=True, reason="key rotation", by="alice")
    return [started, alice, *toggles(count, start=1)]


def test_the_audit_keeps_its_last_entries_only() -> None:
    snap = fold(history(3 * AUDIT_KEPT))
    assert len(snap.audit) == AUDIT_KEPT
    assert snap.audit[-1].reason == f"action {3 * AUDIT_KEPT - 1:06d}"
    assert snap.audit[0].reason == f"action {2 * AUDIT_KEPT:06d}"


def test_a_snapshots_size_stops_growing() -> None:
    sizes = [len(msgspec.json.encode(fold(history(n)))) for n in (AUDIT_KEPT, 5 * AUDIT_KEPT)]
    assert sizes[1] <= sizes[0] + 64  # the counters' digits, not the history


def test_who_put_a_model_in_maintenance_outlives_the_trail() -> None:
    snap = fold(history(2 * AUDIT_KEPT))
    assert all(entry.model_id == "b" for entry in snap.audit)  # alice's is long gone
    assert snap.states["a"].by == "alice"
    (row,) = [r for r in rows_of(snap, {}) if r.model == "a"]
    assert (row.state, row.by, row.reason) == (HealthState.MAINTENANCE, "alice", "key rotation")


def test_a_state_change_clears_who() -> None:
    events = [
        *history(0),
        Maintenance(at=T0 + timedelta(seconds=5), model_id="a", on=False, by="alice"),
        StateChanged(
            at=T0 + timedelta(seconds=6),
            model_id="a",
            from_state=HealthState.HEALTHY,
            to_state=HealthState.DEGRADED,
            reason="2 failures",
        ),
    ]
    assert fold(events).states["a"].by == ""


def test_a_fold_from_a_stored_snapshot_equals_one_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with SQLiteEventStore(path, durability="buffered", snapshot_every=250) as store:
        for event in history(3 * AUDIT_KEPT + 17):
            store.append(event)
    with SQLiteEventStore(path, create=False) as store:
        assert store.snapshots.load()[1] > 0  # the snapshots were there to start from
        from_snapshot = replay(store)
        assert from_snapshot == replay(store, from_start=True)
    assert len(from_snapshot.audit) == AUDIT_KEPT


async def test_live_and_replayed_trails_agree_past_the_bound() -> None:
    clients = {"a": FakeModelClient(always("ok")), "b": FakeModelClient(always("ok"))}
    async with engine(clients) as fo:
        for n in range(AUDIT_KEPT + 30):
            await fo.set_maintenance("b", n % 2 == 0, reason=f"n{n}")
        live = fo.snapshot()
        assert replay(fo.event_store) == live
    assert len(live.audit) == AUDIT_KEPT


def test_failover_audit_lists_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with SQLiteEventStore(path, durability="buffered") as store:
        for event in history(AUDIT_KEPT + 500):
            store.append(event)
    result = CliRunner().invoke(app, ["audit", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == AUDIT_KEPT + 501  # alice's and every toggle
    assert msgspec.json.decode(lines[0])["by"] == "alice"
