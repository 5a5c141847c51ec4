"""Retention: an open engine archives its log's old events in the background.

``Retention(keep_days, archive_dir, interval=3600)`` (or the configuration's ``retention:``
section) makes ``MultiModelFailover`` run a round when it opens (``async with``) and then
every ``interval`` seconds: the events older than ``keep_days`` days move out of the live log
into SQLite archive files in ``archive_dir``, one per UTC day of the events
(``events-YYYY-MM-DD.sqlite3``; a later round continues the day's file), exactly as
``failover archive`` moves them (``storage.archive``: a cut snapshot left behind, totals
unchanged, the space given back).

A round runs on a worker thread: the event loop never waits for it (the engine's calls wait
at most for one slice of the archive, a few milliseconds, to commit their events). A round
that fails (the folder cannot be created, the disk is full, a row this version cannot read) is
logged loudly and tried again at the next interval; it never raises into a call. Closing the
engine stops a round between two slices: what it had done stands, the next round completes it.

One archiver per log: in a fleet sharing a PostgreSQL log, configure retention on one replica.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from loguru import logger

from ..core.protocols import Sleep
from ..storage import GroupCommitStore
from ..storage.archive import ArchiveResult, archive
from .config import RetentionConfig

DAY_FILE = "events-{day:%Y-%m-%d}.sqlite3"


@dataclass(frozen=True)
class Retention:
    """How long the live log keeps events (``keep_days``, > 0), where older ones go
    (``archive_dir``, created on use with mode 0700) and how often to look (``interval``,
    seconds)."""

    keep_days: float
    archive_dir: Path
    interval: float = 3600.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.keep_days) and self.keep_days > 0):
            raise ValueError(f"retention keep_days must be > 0 and finite, got {self.keep_days!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"retention interval must be > 0 seconds, got {self.interval!r}")

    @classmethod
    def coerce(cls, value: Retention | RetentionConfig | Mapping[str, Any]) -> Retention:
        """A ``Retention`` from itself, the configuration's section or a dict of its keys
        (unknown keys and bad values: ``ValueError`` naming the key)."""
        if isinstance(value, Retention):
            return value
        if isinstance(value, RetentionConfig):
            return cls(value.keep_days, Path(value.archive_dir), value.interval)
        unknown = sorted(set(value) - {"keep_days", "archive_dir", "interval"})
        if unknown:
            raise ValueError(f"unknown retention key(s): {', '.join(unknown)}")
        if "keep_days" not in value or "archive_dir" not in value:
            raise ValueError("retention needs keep_days and archive_dir")
        return cls(
            float(value["keep_days"]),
            Path(os.fspath(value["archive_dir"])),
            float(value.get("interval", 3600.0)),
        )


def day_file(folder: Path, day: datetime) -> Path:
    """The archive file of the events of ``day`` (UTC) in ``folder``."""
    return folder / DAY_FILE.format(day=day)


def archive_round(
    store: GroupCommitStore,
    retention: Retention,
    now: datetime,
    stop: Callable[[], bool] | None = None,
) -> list[ArchiveResult]:
    """One round: archive the events older than ``now - keep_days``, each UTC day of them into
    its own file (the day of the first event left in the log first). Blocking."""
    cutoff = now - timedelta(days=retention.keep_days)
    retention.archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    done: list[ArchiveResult] = []
    while stop is None or not stop():
        # The day of the log's first event (in seq order: an archive moves a prefix of the
        # log, so an older event behind a newer one goes with the newer one's day).
        rows = store.query("SELECT at FROM events ORDER BY seq LIMIT 1")
        if not rows:
            break
        first = store.at_time(rows[0][0]).astimezone(UTC)
        if first >= cutoff:
            break
        end_of_day = datetime.combine(first.date() + timedelta(days=1), time(), UTC)
        result = archive(
            store,
            before=min(cutoff, end_of_day),
            to=day_file(retention.archive_dir, first),
            stop=stop,
        )
        done.append(result)
        if not result.complete or not result.moved:
            break  # stopped (the next round goes on), or nothing could move
    return done


class RetentionTask:
    """The background loop of one engine: ``start`` in ``__aenter__``, ``stop`` when it
    closes. ``now`` is the engine's wall clock, ``sleep`` its sleep."""

    def __init__(
        self,
        store: GroupCommitStore,
        retention: Retention,
        *,
        now: Callable[[], datetime],
        sleep: Sleep,
    ) -> None:
        self.store = store
        self.retention = retention
        self._now = now
        self._sleep = sleep
        self._stop = threading.Event()
        self._group: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._ended: anyio.Event | None = None
        self.rounds = 0  # rounds that ran to their end
        self.failures = 0  # rounds that failed (each logged)
        self.results: list[ArchiveResult] = []  # the latest round's

    async def start(self) -> None:
        """Run the loop in a task group of its own, entered in the caller's task."""
        self._ended = anyio.Event()
        self._scope = anyio.CancelScope()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(self._run, self._scope, self._ended)

    async def stop(self) -> None:
        """Stop the loop (a round in progress stops at its next slice) and wait for it.
        Any task may call it; ``exit`` must be called by the task that called ``start``."""
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()
        if self._ended is not None:
            with anyio.CancelScope(shield=True):
                await self._ended.wait()

    async def exit(self) -> None:
        """Stop, and leave the task group (in the task that called ``start``)."""
        await self.stop()
        group, self._group = self._group, None
        if group is not None:
            await group.__aexit__(None, None, None)

    async def _run(self, scope: anyio.CancelScope, ended: anyio.Event) -> None:
        try:
            with scope:
                while not self._stop.is_set():
                    await self.run_once()
                    await self._sleep(self.retention.interval)
        finally:
            ended.set()

    async def run_once(self) -> None:
        """One round on a worker thread; a failure is logged, counted and never raised."""
        try:
            self.results = await anyio.to_thread.run_sync(
                archive_round, self.store, self.retention, self._now(), self._stop.is_set
            )
        except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
            self.failures += 1
            logger.error(
                "retention: archiving the events of {} older than {} day(s) into {} failed "
                "({}: {}); trying again in {} s",
                self.store.location,
                self.retention.keep_days,
                self.retention.archive_dir,
                type(exc).__name__,
                exc,
                self.retention.interval,
            )
            return
        self.rounds += 1
        moved = sum(r.moved for r in self.results)
        if moved:
            logger.info(
                "retention: moved {} event(s) of {} into {}",
                moved,
                self.store.location,
                ", ".join(dict.fromkeys(r.archive for r in self.results)),
            )
