"""The log after months: engine start, ``replay`` and archiving on logs of 10k to 10M events,
and what an event costs on disk.

- **Logs.** One per size, built once through the store itself (``cli_bench.build_log``: a day
  of traffic on three models, appended ``buffered`` and flushed every 200,000 appends so the
  store's buffer never overflows), closed cleanly so that its latest snapshot is the one taken
  at close. Cached in a folder for the run (``--log-dir``: across runs, with a marker file
  saying what each log holds).
- **Engine start.** On a fresh event loop: a ticker task sleeps 1 ms at a time and keeps the
  longest gap between two of its wake-ups; meanwhile the engine is built
  (``MultiModelFailover(clients, event_store=path)``, default durability) and its first call
  answered. The time is from the constructor to that answer; the longest gap is how long the
  loop ran nothing else. A warm-up start on a small log first, so that imports done at first
  use are not counted; one more start in a fresh process (``--cold-start``) counts them. The
  garbage of what ran before is collected before each start. Starts and ``replay(path)`` go
  in rounds over every size, in a shuffled order.
- **Start after a crash.** The same on a copy of the log with 9,999 more events appended by a
  store that takes no snapshot (what a process killed just before its next periodic snapshot
  leaves): the engine's store takes none either, so every start folds those events again.
- **Replay.** ``replay(path)`` (from the latest snapshot) and ``replay(path, from_start=True)``
  (every event); both must give the same fold.
- **Bytes per event.** ``(page_count - freelist_count) * page_size / count(*)`` after
  ``PRAGMA wal_checkpoint(TRUNCATE)``, indexes and snapshots included; ``dbstat`` splits the
  table from its indexes where SQLite has it. The hot-path mix: the engine's own calls on two
  clients named like real models (9 in 10 answered by the first, 1 in 10 failed over).
- **Archive.** A copy of a log is archived up to its middle event (half its events), the
  archive run on a worker thread while the ticker watches the event loop; events moved per
  second and the live file's size before and after. The live log must replay to the same fold.

Run alone: ``python benchmarks/log_scale.py --log-sizes 10k,1M`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cli_bench import build_log, event_time
from contenders import ATTEMPT_TIMEOUT, HEALTH
from fakes import PROMPT, FakeClient
from throughput import sample_events

from devs.risks.multi_model_failover import (
    ErrorKind,
    ModelError,
    MultiModelFailover,
    RetryPolicy,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.core.events import SCHEMA_VERSION
from devs.risks.multi_model_failover.storage.archive import archive

SIZES: Final = (10_000, 1_000_000, 10_000_000)
FAST_SIZES: Final = (10_000, 100_000, 1_000_000)
TICK: Final = 0.001  # the ticker's sleep (seconds)
MODELS: Final = ("primary", "secondary")  # the engine's clients: models the built logs know
HOT_PATH_MODELS: Final = ("gpt-4o-mini", "claude-haiku-4-5")
CRASH_TAIL: Final = 9_999  # events past the latest snapshot: one short of SNAPSHOT_EVERY


def parse_sizes(text: str) -> tuple[int, ...]:
    """``10k,1M,10M`` (or plain numbers) as event counts, in increasing order."""
    units = {"k": 1_000, "m": 1_000_000}
    sizes = []
    for given in text.split(","):
        part = given.strip().lower().replace("_", "")
        if not part:
            continue
        scale = units.get(part[-1], 1)
        number = part[:-1] if part[-1] in units else part
        sizes.append(int(float(number) * scale))
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--log-sizes: expected sizes such as 10k,1M,10M, got {text!r}")
    return tuple(sorted(set(sizes)))


def size_label(events: int) -> str:
    """``10M``, ``1M``, ``10k``, or the number."""
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if events >= scale and events % scale == 0:
            return f"{events // scale:,}{unit}"
    return f"{events:,}"


def load_average() -> float:
    """The 1-minute load average (other work on the machine skews the figures)."""
    return os.getloadavg()[0]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (0 when there are none)."""
    return statistics.median(values) if values else 0.0


# -- the logs ------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".built"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# What an archive holds, by the version that made it: 2 since archives keep a snapshot every so
# many copied events.
ARCHIVE_FORMAT: Final = 2
# What a log holds besides its events: 2 since a log keeps a periodic snapshot per
# ``snapshot_every`` events (before, only its two latest), which an archive starts from.
SNAPSHOTS_FORMAT: Final = 2


class LogCache:
    """The benchmark logs, built once each in ``folder`` and reused.

    A log is reused when its marker file says it was built with ``events`` events by this row
    format; engine starts measured on it add a few events each, which is fine.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.built: dict[int, float] = {}  # events -> seconds the build took (this run)

    def _marker(self, events: int, kind: str = "log") -> dict[str, Any]:
        marker: dict[str, Any] = {
            "kind": kind,
            "events": events,
            "schema": SCHEMA_VERSION,
            "snapshots": SNAPSHOTS_FORMAT,
        }
        if kind != "log":
            # An archive made by an older version lacks what a newer one writes (its
            # snapshots every so many events): it is made again.
            marker["archive"] = ARCHIVE_FORMAT
        return marker

    def _holds(self, path: Path, marker: dict[str, Any]) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return path.is_file() and json.loads(Path(f"{path}.built").read_text()) == marker
        return False

    def log(self, events: int) -> Path:
        """The log of ``events`` events, built now unless cached."""
        path = self.folder / f"events-{size_label(events)}.sqlite3"
        marker = self._marker(events)
        if self._holds(path, marker):
            return path
        _remove(path)
        print(f"  building a log of {events:,} events through the store", file=sys.stderr)
        started = time.perf_counter()
        build_log(path, events)
        self.built[events] = time.perf_counter() - started
        os.sync()  # what is measured next does not wait for the build's writes to reach disk
        Path(f"{path}.built").write_text(json.dumps(marker))
        return path

    def archived(self, events: int) -> tuple[Path, Path, ArchiveFigures | None]:
        """A copy of the log of ``events`` events with its first half archived,
        and its archive file; the archive's figures when it was made now (None if cached)."""
        live = self.folder / f"events-{size_label(events)}-archived.sqlite3"
        to = self.folder / f"events-{size_label(events)}-archive.sqlite3"
        marker = self._marker(events, "first half archived")
        if self._holds(live, marker) and to.is_file():
            return live, to, None
        source = self.log(events)
        _remove(live)
        _remove(to)
        figures = archive_copy(source, live, to, events)
        Path(f"{live}.built").write_text(json.dumps(marker))
        return live, to, figures


# -- the event loop's stalls -----------------------------------------------------------------


class Ticker:
    """A task on the running loop that sleeps ``TICK`` at a time and keeps the longest gap
    between two wake-ups: the longest time the loop ran nothing else (plus the tick).

    Also kept, to tell causes apart: when the longest gap began (seconds from the start), and
    the longest full (generation 2) garbage collection meanwhile, on any thread (it holds the
    GIL, so the loop waits for it)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_at = 0.0
        self.gc_longest = 0.0
        self.ticks = 0
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self._gc_began = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_longest = max(self.gc_longest, time.perf_counter() - self._gc_began)

    async def _run(self) -> None:
        timer = time.perf_counter
        sleep = asyncio.sleep
        began = timer()
        while not self._stop:
            before = timer()
            await sleep(TICK)
            gap = timer() - before
            self.ticks += 1
            if gap > self.longest:
                self.longest = gap
                self.longest_at = before - began

    async def __aenter__(self) -> Ticker:
        gc.callbacks.append(self._gc)
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # its first sleep begins before what is measured
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        gc.callbacks.remove(self._gc)
        if self._task is not None:
            await self._task


async def idle_gap(seconds: float = 0.2) -> float:
    """The longest gap the ticker sees on an idle loop: the floor of every stall figure."""
    async with Ticker() as ticker:
        await asyncio.sleep(seconds)
    return ticker.longest


# -- engine start --------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """One engine start: seconds from the constructor to the first answer, the constructor
    alone, and the longest gap between the ticker's wake-ups meanwhile."""

    seconds: float
    constructor: float
    gap: float
    gc_longest: float = 0.0  # the longest full garbage collection meanwhile


async def start_once(path: Path, store: Callable[[], Any] | None = None) -> Start:
    """Build an engine on ``path`` (or on ``store()``) with the ticker running, answer one
    call, then close it (untimed)."""
    engine: MultiModelFailover | None = None
    try:
        async with Ticker() as ticker:
            began = time.perf_counter()
            engine = MultiModelFailover(
                [FakeClient(m) for m in MODELS],
                event_store=store() if store is not None else os.fspath(path),
            )
            built = time.perf_counter()
            await engine.call(PROMPT)
            answered = time.perf_counter()
    finally:
        if engine is not None:
            await engine.aclose()
    return Start(answered - began, built - began, ticker.longest, ticker.gc_longest)


def start(path: Path, store: Callable[[], Any] | None = None) -> Start:
    """One engine start on ``path`` on a fresh event loop (as a process has one). The garbage
    of what ran before is collected first: a start does not pay for it."""
    gc.collect()
    return asyncio.run(start_once(path, store))


def cold_start(path: Path) -> Start:
    """One engine start in a fresh process (the package imported, nothing used yet)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--cold-start", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - this script
    if done.returncode != 0:
        raise RuntimeError(f"cold start failed: {done.stderr.strip()}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Start(**figures)


def warm_up(folder: Path) -> None:
    """One engine start on a small log of its own: the imports done at first use are paid."""
    path = folder / "warm-up.sqlite3"
    _remove(path)
    start(path)
    _remove(path)


def append_crash_tail(path: Path, events: int = CRASH_TAIL) -> None:
    """Append ``events`` events with a store that takes no snapshot (a process that died
    before its next periodic snapshot)."""
    prefix = f"crash-{secrets.token_hex(4)}"
    tail = sample_events(events // 4 + 1, prefix=prefix)[:events]
    with SQLiteEventStore(path, durability="buffered", snapshot_every=None) as store:
        for event in tail:
            store.append(event)
        if not store.flush(300.0):
            raise RuntimeError(f"the crash tail was not committed: {store.last_error}")


# -- disk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """A log file's size: ``used`` bytes (pages in use), per event, and the events table's and
    its indexes' share (None without SQLite's ``dbstat``)."""

    events: int
    used: int
    file: int
    table: int | None
    indexes: int | None

    @property
    def per_event(self) -> float:
        return self.used / self.events if self.events else 0.0


def disk(path: Path) -> Disk:
    """The bytes a closed log holds, after a full checkpoint of its WAL."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        table = indexes = None
        with contextlib.suppress(sqlite3.Error):  # no dbstat in this SQLite build
            names = {
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
                )
            }
            sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
            table = int(sizes.get("events", 0))
            indexes = sum(int(sizes.get(name, 0)) for name in names)
    return Disk(int(events), (pages - free) * page_size, path.stat().st_size, table, indexes)


class FlakyClient(FakeClient):
    """Answers, but fails every ``every``-th call with a server error."""

    def __init__(self, model_id: str, every: int) -> None:
        super().__init__(model_id)
        self.every = every

    async def call(self, prompt: str) -> str:
        self.calls += 1
        if self.calls % self.every == 0:
            raise ModelError("upstream overloaded", kind=ErrorKind.SERVER)
        return "ok"


def hot_path_disk(folder: Path, calls: int) -> Disk:
    """Bytes per event of the engine's own calls: two clients named like real models, 9 in 10
    calls answered by the first, 1 in 10 failed over to the second (``buffered`` file log)."""
    path = folder / "hot-path.sqlite3"
    _remove(path)

    async def run() -> None:
        primary, secondary = HOT_PATH_MODELS
        # Not entered with ``async with``: no health probes, only the calls' events.
        engine = MultiModelFailover(
            [FlakyClient(primary, 10), FakeClient(secondary)],
            RetryPolicy(max_attempts=1, attempt_timeout=ATTEMPT_TIMEOUT),
            health_policy=HEALTH,
            event_store=os.fspath(path),
            durability="buffered",
        )
        try:
            for _ in range(calls):
                await engine.call(PROMPT)
        finally:
            await engine.aclose()

    asyncio.run(run())
    found = disk(path)
    _remove(path)
    return found


# -- archive -------------------------------------------------------------------------------


def _copy_closed(source: Path, to: Path) -> None:
    """Copy a log that no connection holds open (its WAL, if any, is empty)."""
    wal = Path(f"{source}-wal")
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{source} is open or was not closed cleanly: its WAL is not empty")
    shutil.copyfile(source, to)


@dataclass(frozen=True)
class ArchiveFigures:
    """One archive of half a log: events moved, seconds, the live log's size before and
    after (bytes), the archive file's size, the longest event-loop gap while it ran on a
    worker thread, and whether the live log still replays to the same fold."""

    log_events: int
    moved: int
    seconds: float
    size_before: int
    size_after: int
    archive_size: int
    gap: float
    same_fold: bool
    gap_at: float = 0.0  # seconds into the archive when the longest gap began
    gc_longest: float = 0.0  # the longest full garbage collection meanwhile

    @property
    def rate(self) -> float:
        return self.moved / self.seconds if self.seconds else 0.0


def archive_copy(source: Path, live: Path, to: Path, events: int) -> ArchiveFigures:
    """Copy ``source`` (a closed log) to ``live`` and archive its first half (the events
    before the middle one's time) into ``to``, on a worker thread while the ticker watches
    the loop."""
    _copy_closed(source, live)
    expected = replay(source)
    before = event_time(source, 0.5)

    def run() -> Any:
        with SQLiteEventStore(live, durability="buffered") as store:
            return archive(store, before=before, to=to)

    async def watched() -> tuple[Any, Ticker]:
        async with Ticker() as ticker:
            result = await asyncio.to_thread(run)
        return result, ticker

    gc.collect()  # as before a start: the archive pays for its own garbage only
    os.sync()  # nor for the copy's writes, still to reach the disk
    result, ticker = asyncio.run(watched())
    if not result.complete:
        raise RuntimeError(f"the archive of {live} did not complete")
    return ArchiveFigures(
        log_events=events,
        moved=result.moved,
        seconds=result.seconds,
        size_before=result.size_before or 0,
        size_after=result.size_after or 0,
        archive_size=to.stat().st_size,
        gap=ticker.longest,
        same_fold=replay(live) == expected,
        gap_at=ticker.longest_at,
        gc_longest=ticker.gc_longest,
    )


def archive_runs(cache: LogCache, events: int, runs: int) -> list[ArchiveFigures]:
    """``runs`` archives of half the log of ``events`` events, each on a fresh copy."""
    source = cache.log(events)
    found = []
    for _ in range(runs):
        live = cache.folder / "archive-run-live.sqlite3"
        to = cache.folder / "archive-run-archive.sqlite3"
        _remove(live)
        _remove(to)
        try:
            found.append(archive_copy(source, live, to, events))
        finally:
            _remove(live)
            _remove(to)
    return found


# -- one size --------------------------------------------------------------------------------


@dataclass
class Scale:
    """Everything measured on the log of one size (seconds unless said otherwise)."""

    events: int  # as built
    held: int = 0  # events in the log when measured (engine starts add a few)
    disk: Disk | None = None
    starts: list[Start] = field(default_factory=list)
    crash_starts: list[Start] = field(default_factory=list)
    cold: Start | None = None
    replay: list[float] = field(default_factory=list)
    from_start: list[float] = field(default_factory=list)
    same_fold: bool = True
    built: float | None = None  # seconds the build took (None: cached)
    load: float = 0.0  # 1-minute load average before it was measured

    @property
    def label(self) -> str:
        return size_label(self.events)


def _timed(func: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    result = func()
    return time.perf_counter() - began, result


def measure_sizes(
    cache: LogCache, sizes: Sequence[int], runs: int, *, cold: bool, say: Callable[[str], None]
) -> list[Scale]:
    """Engine starts (clean, after a crash, cold), replays and disk use on the log of each
    size. Clean starts and ``replay(path)`` go in ``runs`` rounds, each round every log once in
    a shuffled order, so drift of the machine is spread over every size alike."""
    paths = {events: cache.log(events) for events in sizes}
    os.sync()
    scales = {}
    for events, path in paths.items():
        scale = Scale(events, built=cache.built.get(events), disk=disk(path))
        scale.held = scale.disk.events if scale.disk else 0
        scales[events] = scale
    say(f"engine starts and replays: {runs} rounds over {len(sizes)} logs")
    shuffle = random.Random(0).shuffle
    for _ in range(runs):
        order = list(sizes)
        shuffle(order)
        for events in order:
            scale = scales[events]
            scale.starts.append(start(paths[events]))
            seconds, _ = _timed(lambda p=paths[events]: replay(p))
            scale.replay.append(seconds)
    for events, path in paths.items():
        scale = scales[events]
        scale.load = load_average()
        if cold:
            scale.cold = cold_start(path)
        # A fold of everything costs about a minute per 10M events: fewer runs on big logs.
        whole = 1 if events > 2_000_000 else min(runs, 3)
        say(f"replay from the start of {events:,} events, {whole} time(s); starts after a crash")
        latest = replay(path)  # engine starts append events: the fold to compare is this one
        folded: object = None
        for _ in range(whole):
            seconds, folded = _timed(lambda p=path: replay(p, from_start=True))
            scale.from_start.append(seconds)
        scale.same_fold = latest == folded
        crashed = cache.folder / "crashed-copy.sqlite3"
        _remove(crashed)
        _copy_closed(path, crashed)
        try:
            append_crash_tail(crashed)
            os.sync()  # the copy's writes are the harness's, not the start's
            scale.crash_starts = [
                start(crashed, lambda c=crashed: SQLiteEventStore(c, snapshot_every=None))
                for _ in range(runs)
            ]
        finally:
            _remove(crashed)
    return [scales[events] for events in sizes]


@dataclass
class ScaleReport:
    """The figures of every size, the idle loop's gap, the hot-path disk use, the archives."""

    sizes: list[Scale] = field(default_factory=list)
    idle_gap: float = 0.0
    hot_path: Disk | None = None
    hot_path_calls: int = 0
    archives: list[ArchiveFigures] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)


def measure(
    cache: LogCache,
    sizes: Sequence[int],
    *,
    runs: int,
    archive_events: int | None,
    archive_repeats: int,
    hot_path_calls: int,
    cold: bool = True,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> ScaleReport:
    """Every figure of this module, size by size."""
    report = ScaleReport(hot_path_calls=hot_path_calls)
    start_load = load_average()
    say(f"bytes per event: {hot_path_calls:,} engine calls on {' and '.join(HOT_PATH_MODELS)}")
    report.hot_path = hot_path_disk(cache.folder, hot_path_calls)
    warm_up(cache.folder)
    report.idle_gap = median([asyncio.run(idle_gap(0.05)) for _ in range(runs)])
    report.sizes = measure_sizes(cache, sizes, runs, cold=cold, say=say)
    if archive_events is not None and archive_repeats > 0:
        say(f"archive half of {archive_events:,} events, {archive_repeats} time(s)")
        report.archives = archive_runs(cache, archive_events, archive_repeats)
    report.load = (start_load, load_average())
    return report


# -- printing ------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Seconds as milliseconds, 3 significant figures or so."""
    value = seconds * 1000
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def console(report: ScaleReport) -> str:
    """Plain lines for the terminal (run.py renders the markdown tables)."""
    lines = [f"idle loop: longest gap {ms(report.idle_gap)} ms"]
    if report.hot_path is not None:
        lines.append(f"hot path: {report.hot_path.per_event:.1f} bytes/event")
    for s in report.sizes:
        lines.append(
            f"{s.label:>5}: start {ms(median([x.seconds for x in s.starts]))} ms "
            f"(gap {ms(max(x.gap for x in s.starts))} ms), after a crash "
            f"{ms(median([x.seconds for x in s.crash_starts]))} ms "
            f"(gap {ms(max(x.gap for x in s.crash_starts))} ms), replay "
            f"{ms(median(s.replay))} ms, from the start {median(s.from_start):.2f} s"
            + ("" if s.same_fold else " DIFFERENT FOLDS")
        )
    for a in report.archives:
        lines.append(
            f"archive: {a.moved:,} events in {a.seconds:.1f} s ({a.rate:,.0f}/s), "
            f"{mib(a.size_before)} -> {mib(a.size_after)}, gap {ms(a.gap)} ms "
            f"{a.gap_at:.1f} s in (longest full GC {ms(a.gc_longest)} ms)"
        )
    return "\n".join(lines)


def _cold_start_main(path: str) -> None:
    found = asyncio.run(start_once(Path(path)))
    figures = {
        "seconds": found.seconds,
        "constructor": found.constructor,
        "gap": found.gap,
        "gc_longest": found.gc_longest,
    }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-sizes", default="10k,1M,10M")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep and reuse the logs here")
    parser.add_argument("--log-repeats", type=int, default=5)
    parser.add_argument("--archive-events", default="1M")
    parser.add_argument("--archive-repeats", type=int, default=1)
    parser.add_argument("--hot-path-calls", type=int, default=100_000)
    parser.add_argument("--cold-start", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.cold_start is not None:
        _cold_start_main(options.cold_start)
        return
    import tempfile  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        folder = options.log_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="failover-scale-"))
        )
        report = measure(
            LogCache(folder),
            parse_sizes(options.log_sizes),
            runs=options.log_repeats,
            archive_events=parse_sizes(options.archive_events)[0],
            archive_repeats=options.archive_repeats,
            hot_path_calls=options.hot_path_calls,
        )
    print(console(report))


if __name__ == "__main__":
    main()
