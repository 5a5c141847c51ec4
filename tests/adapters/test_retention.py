"""Retention: the configuration keys, a round of archiving by day, and the background loop of
an open engine (never on the event loop, failures logged and retried, stopped by closing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from devs.risks.multi_model_failover import ConfigError, MultiModelFailover, replay
from devs.risks.multi_model_failover.adapters import retention as retention_module
from devs.risks.multi_model_failover.adapters.config import parse_config
from devs.risks.multi_model_failover.adapters.retention import Retention, archive_round
from devs.risks.multi_model_failover.core.events import Event, HealthProbe
from devs.risks.multi_model_failover.core.projections import fold
from devs.risks.multi_model_failover.storage.archive import ArchiveResult, read_rows
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
TARGET = "tests.adapters.test_retention:echo"
GUARD = 10.0  # seconds: a hang guard, never a timing assertion


def echo(prompt: str) -> str:
    """A plain function used as a `callable` client."""
    return f"echo: {prompt}"


class Echo:
    """A model client that answers at once."""

    async def call(self, prompt: str) -> str:
        return echo(prompt)

    async def health_check(self) -> bool:
        return True


def document(**retention: object) -> dict[str, object]:
    return {
        "multi_model_failover": {
            "clients": [{"id": "local", "kind": "callable", "target": TARGET}],
            "retention": retention,
        }
    }


# -- configuration ---------------------------------------------------------------------------------


def test_the_retention_keys() -> None:
    config = parse_config(document(keep_days=7, archive_dir="var/archive", interval=600))
    assert config.retention is not None
    assert Retention.coerce(config.retention) == Retention(7.0, Path("var/archive"), 600.0)
    assert parse_config(document(keep_days=0.5, archive_dir="a")).retention.interval == 3600  # type: ignore[union-attr]
    assert (
        parse_config(
            {"multi_model_failover": document()["multi_model_failover"] | {"retention": None}}
        ).retention
        is None
    )  # type: ignore[operator]


@pytest.mark.parametrize(
    ("retention", "named"),
    [
        ({"keep_days": "7", "archive_dir": "a"}, "multi_model_failover.retention.keep_days"),
        ({"keep_days": 7, "archive_dir": 3}, "multi_model_failover.retention.archive_dir"),
        ({"keep_days": 0, "archive_dir": "a"}, "keep_days must be > 0"),
        ({"keep_days": 7, "archive_dir": "a", "interval": -1}, "interval must be > 0"),
        ({"keep_days": 7, "archive_dir": " "}, "archive_dir must name a folder"),
        ({"keep_days": 7}, "missing required field `archive_dir`"),
        ({"keep_days": 7, "archive_dir": "a", "every": 1}, "unknown field `every`"),
    ],
)
def test_bad_retention_values_are_config_errors_naming_the_key(
    retention: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=r"multi_model_failover\.retention") as raised:
        parse_config(document(**retention))
    assert named in str(raised.value)


def test_the_constructor_checks_its_retention_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown retention key"):
        MultiModelFailover({"a": Echo()}, retention={"keep": 1, "archive_dir": tmp_path})
    with pytest.raises(ValueError, match="keep_days must be > 0"):
        MultiModelFailover({"a": Echo()}, retention={"keep_days": -1, "archive_dir": tmp_path})


# -- a round ---------------------------------------------------------------------------------------


def probes(start: datetime, hours: int) -> list[Event]:
    """One event an hour for ``hours`` hours from ``start``."""
    return [
        HealthProbe(at=start + timedelta(hours=n), model_id="a", ok=True, latency=0.01)
        for n in range(hours)
    ]


def write(path: Path, events: list[Event]) -> None:
    with SQLiteEventStore(path) as log:
        for event in events:
            log.append(event)


def test_a_round_archives_each_day_of_old_events_into_its_own_file(tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite3"
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)  # 06:00 on March 1st, for 9 days
    write(log, probes(start, 9 * 24))
    folder = tmp_path / "archive"
    with SQLiteEventStore(log) as live:
        whole = fold(live.read())
        results = archive_round(live, Retention(keep_days=7, archive_dir=folder), NOW)
        # Older than March 3rd 12:00: March 1st (from 06:00), 2nd, and the 3rd's first hours.
        assert sorted(p.name for p in folder.iterdir()) == [
            "events-2025-03-01.sqlite3",
            "events-2025-03-02.sqlite3",
            "events-2025-03-03.sqlite3",
        ]
        assert [r.moved for r in results] == [18, 24, 12]
        assert all(e.at >= NOW - timedelta(days=7) for e in live.read())
        assert msgspec.to_builtins(replay(live)) == msgspec.to_builtins(whole)
        # An hour later, the next round continues the day's file.
        later = archive_round(
            live, Retention(keep_days=7, archive_dir=folder), NOW + timedelta(hours=1)
        )
        assert [(Path(r.archive).name, r.moved) for r in later] == [
            ("events-2025-03-03.sqlite3", 1)
        ]
    with SQLiteEventStore(folder / "events-2025-03-02.sqlite3", create=False) as day:
        assert {e.at.date() for e in day.read()} == {datetime(2025, 3, 2, tzinfo=UTC).date()}
    assert (folder.stat().st_mode & 0o777) == 0o700


def test_a_round_with_nothing_old_enough_creates_no_file(tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite3"
    write(log, probes(NOW - timedelta(days=2), 24))
    with SQLiteEventStore(log) as live:
        assert archive_round(live, Retention(7, tmp_path / "archive"), NOW) == []
    assert list((tmp_path / "archive").iterdir()) == []


# -- the background loop ---------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def old_log(tmp_path: Path) -> Path:
    """A log whose first three days are ten days old."""
    path = tmp_path / "live.sqlite3"
    now = datetime.now(UTC)
    write(path, probes(now - timedelta(days=10), 72) + probes(now - timedelta(hours=2), 2))
    return path


def engine(log: Path, folder: Path, **options: Any) -> MultiModelFailover:
    options.setdefault("interval", 0.05)
    return MultiModelFailover(
        {"a": Echo()},
        event_store=str(log),
        retention={"keep_days": 1, "archive_dir": folder, **options},
    )


async def wait_for(condition: Any) -> None:
    with anyio.fail_after(GUARD):
        while not condition():  # noqa: ASYNC110 - counters a worker thread moves
            await anyio.sleep(0.01)


async def test_an_open_engine_archives_in_the_background(old_log: Path, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    with SQLiteEventStore(old_log, create=False) as log:
        before = list(read_rows(log, after=0, upto=log.last_seq()))
    fo = engine(old_log, folder)
    async with fo:
        assert fo.retention is not None
        await wait_for(lambda: fo.retention.rounds >= 1)  # type: ignore[union-attr]
        assert await fo.call("still serving") == "echo: still serving"
    files = sorted(folder.iterdir())
    assert len(files) in (3, 4)  # three days of events, split on UTC days
    moved = []
    for file in files:
        with SQLiteEventStore(file, create=False) as day:
            moved += read_rows(day, after=0, upto=day.last_seq())
    with SQLiteEventStore(old_log, create=False) as log:
        kept = list(read_rows(log, after=0, upto=log.last_seq()))
    assert sorted(moved, key=lambda pair: pair[0].seq) + kept[: len(before) - 72] == before
    assert len(moved) == 72
    # An engine opened on the archived log starts from the cut: its totals are the whole log's.
    everything = fold(e for e, _ in sorted(moved, key=lambda pair: pair[0].seq) + kept)
    again = MultiModelFailover({"a": Echo()}, event_store=str(old_log))
    try:
        assert msgspec.to_builtins(again.metrics()) == msgspec.to_builtins(everything.metrics)
    finally:
        await again.aclose()


async def test_a_config_with_retention_builds_an_engine_that_runs_it(
    old_log: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    doc = document(keep_days=1, archive_dir=str(folder), interval=0.05)
    doc["multi_model_failover"]["event_log"] = str(old_log)  # type: ignore[index]
    fo = MultiModelFailover.from_settings(parse_config(doc))
    async with fo:
        await wait_for(lambda: fo.retention is not None and fo.retention.rounds >= 1)
    assert list(folder.iterdir())


async def test_a_round_runs_on_a_worker_thread_while_the_loop_serves_calls(
    old_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    threads: list[int] = []
    real = retention_module.archive_round

    def blocking_round(*args: Any) -> list[ArchiveResult]:
        threads.append(threading.get_ident())
        entered.set()
        assert release.wait(GUARD)
        return real(*args)

    monkeypatch.setattr(retention_module, "archive_round", blocking_round)
    loop_thread = threading.get_ident()
    fo = engine(old_log, tmp_path / "archive")
    async with fo:
        await wait_for(entered.is_set)
        # The round holds its thread; the loop is free: a call is answered meanwhile.
        assert await fo.call("meanwhile") == "echo: meanwhile"
        release.set()
        await wait_for(lambda: fo.retention.rounds >= 1)  # type: ignore[union-attr]
    assert threads
    assert loop_thread not in threads


async def test_a_failing_round_is_logged_and_retried_never_raised(
    old_log: Path, tmp_path: Path, log_records: list[dict[str, object]]
) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the folder should be")
    fo = engine(old_log, blocker)
    async with fo:
        await wait_for(lambda: fo.retention.failures >= 2)  # type: ignore[union-attr]
        assert await fo.call("unharmed") == "echo: unharmed"
        blocker.unlink()  # fixed: the next round succeeds
        await wait_for(lambda: fo.retention.rounds >= 1)  # type: ignore[union-attr]
    errors = [r for r in log_records if r["level"].name == "ERROR"]  # type: ignore[attr-defined]
    assert any(
        "retention" in str(r["message"]) and "trying again" in str(r["message"]) for r in errors
    )
    assert list(blocker.iterdir())


async def test_closing_stops_a_round_between_slices(
    old_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []
    started = threading.Event()

    def endless_round(store: Any, retention: Any, now: Any, stop: Any) -> list[ArchiveResult]:
        started.set()
        while not stop():  # a long archive, slice after slice
            threading.Event().wait(0.005)
        asked.append(True)
        return []

    monkeypatch.setattr(retention_module, "archive_round", endless_round)
    fo = engine(old_log, tmp_path / "archive")
    with anyio.fail_after(GUARD):
        async with fo:
            await wait_for(started.is_set)
            await fo.aclose()
            assert asked == [True]
    assert fo.closed


async def test_without_async_with_nothing_runs(old_log: Path, tmp_path: Path) -> None:
    fo = engine(old_log, tmp_path / "archive")
    await fo.call("x")
    await fo.aclose()
    assert not (tmp_path / "archive").exists()


def test_retention_needs_a_store_it_can_archive(tmp_path: Path) -> None:
    class Elsewhere:
        def append(self, event: Event) -> int:
            return 0

        async def wait_committed(self, ticket: int) -> None:
            return None

        def read(self) -> Iterator[Event]:
            return iter(())

        def read_others(self, after: int) -> tuple[list[Event], int]:
            return [], after

        async def aclose(self) -> None:
            return None

    with pytest.raises(TypeError, match="retention needs an SQLite or PostgreSQL event store"):
        MultiModelFailover(
            {"a": Echo()},
            event_store=Elsewhere(),  # type: ignore[arg-type]
            retention={"keep_days": 1, "archive_dir": tmp_path},
        )
