"""A 20,000-event log built like the 1,000,000-event benchmark: answers equal replay's."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import Metrics, SQLiteEventStore, replay
from devs.risks.multi_model_failover.adapters.cli.queries import (
    STATE_TYPES,
    EventFilter,
    _condition,
)

Run = Callable[..., Result]
BENCH = Path(__file__).parents[2] / "benchmarks" / "cli_bench.py"
EVENTS = 20_000


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def large_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "events.sqlite3"
    built: Path = load_bench().build_log(path, EVENTS)
    return built


def test_the_benchmark_log_is_a_valid_event_log(large_log: Path) -> None:
    with SQLiteEventStore(large_log, create=False) as store:
        assert store.count() == EVENTS
        assert store.last_seq() == EVENTS


def test_metrics_equal_replay(run_cli: Run, large_log: Path) -> None:
    result = run_cli("metrics", large_log, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert msgspec.json.decode(result.stdout, type=Metrics) == replay(large_log).metrics


def test_state_at_an_instant_equals_replay_of_the_events_before(
    run_cli: Run, large_log: Path
) -> None:
    with SQLiteEventStore(large_log, create=False) as store:
        events = list(store.read())
    instant = events[len(events) * 3 // 4].at
    expected = replay(e for e in events if e.at <= instant).states
    result = run_cli("state", large_log, "--at", instant.isoformat(), "--json")
    assert result.exit_code == 0, result.stderr
    doc = msgspec.json.decode(result.stdout)
    assert {m: row["state"] for m, row in doc["models"].items()} == {
        m: s.state.value for m, s in expected.items()
    }


def test_timeline_filters_use_the_indexes_and_agree_with_a_scan(
    run_cli: Run, large_log: Path
) -> None:
    with SQLiteEventStore(large_log, create=False) as store:
        events = list(store.read())
    since = datetime(2024, 5, 1, 6, tzinfo=UTC)
    expected = [
        e.seq
        for e in events
        if e.at >= since
        and (
            getattr(e, "model_id", None) == "secondary"
            or "secondary" in (getattr(e, "from_model", None), getattr(e, "to_model", None))
        )
    ]
    result = run_cli(
        "timeline", large_log, "--model", "secondary", "--since", since.isoformat(), "--json"
    )
    got = [msgspec.json.decode(line)["seq"] for line in result.stdout.splitlines()]
    assert got == expected
    assert len(got) > 100
    everything = run_cli("timeline", large_log)
    assert len(everything.stdout.splitlines()) == EVENTS


@pytest.mark.parametrize(
    ("types", "index"),
    [
        (STATE_TYPES, "events_type_rare"),  # `failover state` and `audit`: the partial index
        (("failover",), "events_type_rare"),
        (("attempt_started",), None),  # a hot-path type is not indexed: a scan
    ],
)
def test_type_filters_use_the_partial_index_for_the_rarer_types(
    large_log: Path, types: tuple[str, ...], index: str | None
) -> None:
    with SQLiteEventStore(large_log, create=False) as store:
        where, params = _condition(store, EventFilter(types=types), None)
        plan = " ".join(
            str(row[-1])
            for row in store.query(
                f"EXPLAIN QUERY PLAN SELECT seq, body FROM events WHERE seq > ? AND {where}",  # noqa: S608
                (0, *params),
            )
        )
    if index is None:
        assert "events_type_rare" not in plan
    else:
        assert index in plan, plan
