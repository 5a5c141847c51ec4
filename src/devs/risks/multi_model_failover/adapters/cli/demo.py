"""``failover demo``: a scripted incident on simulated models, no network and no keys.

Three simulated models serve a stream of calls through a real ``MultiModelFailover`` for twenty
minutes of virtual time: the primary rate-limits, then goes down, then recovers; the secondary
takes over; an operator puts the secondary into maintenance and the tertiary covers a wobble of
the primary. A virtual clock drives the engine (its injected ``sleep`` advances the clock), so
the run takes seconds while the log's wall-clock times span realistic minutes, ending now.
"""

from __future__ import annotations

import contextlib
import math
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import anyio
import anyio.lowlevel
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from ...core.errors import AllModelsFailedError, ErrorKind, ModelError
from ...core.responses import ModelResponse, Usage
from ...storage.sqlite import SQLiteEventStore
from ..facade import MultiModelFailover
from .files import is_sqlite
from .queries import pinned, read_events, snapshot_at
from .render import Output, clock_text, describe
from .tables import print_metrics, print_states

DURATION: Final = 20 * 60.0
CALL_GAP: Final = 6.0
MODELS: Final = ("primary", "secondary", "tertiary")
# Virtual seconds since the start at which each act of the incident begins.
RATE_LIMITED_AT: Final = 240.0
DOWN_AT: Final = 420.0
RECOVERED_AT: Final = 660.0
MAINTENANCE_ON_AT: Final = 840.0
WOBBLE_AT: Final = 900.0
WOBBLE_ENDS_AT: Final = 960.0
MAINTENANCE_OFF_AT: Final = 1_020.0


# The demo's mark in its log's meta table: the only proof that the demo may replace the file.
MARK_KEY: Final = "written_by"
MARK: Final = "failover demo"


class DemoError(Exception):
    """The demo cannot run where it was asked to write (one line for the user)."""


class VirtualClock:
    """Monotonic seconds that only move when something sleeps; wall time follows them."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.now = 0.0

    def monotonic(self) -> float:
        """Virtual seconds since the start."""
        return self.now

    def wall(self) -> datetime:
        """The wall-clock time (UTC) at the current virtual instant."""
        return self.start + timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` at once (and let other tasks run)."""
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


def primary_mode(t: float) -> str:
    """What the primary does at virtual second ``t``."""
    if RATE_LIMITED_AT <= t < DOWN_AT:
        return "rate_limited"
    if DOWN_AT <= t < RECOVERED_AT:
        return "down"
    if WOBBLE_AT <= t < WOBBLE_ENDS_AT:
        return "wobbly"
    return "ok"


def steady(_: float) -> str:
    """A model that never misbehaves."""
    return "ok"


class SimulatedModel:
    """A local stand-in for an LLM API: answers, rate-limits, fails or hangs by script."""

    def __init__(
        self,
        name: str,
        clock: VirtualClock,
        rng: random.Random,
        mode: Callable[[float], str],
        latency: float,
    ) -> None:
        self.name = name
        self.clock = clock
        self.rng = rng
        self.mode = mode
        self.latency = latency

    async def call(self, prompt: str) -> ModelResponse:
        """Answer ``prompt`` after a simulated latency, or fail the way the script says."""
        mode = self.mode(self.clock.now)
        if mode == "rate_limited" and self.rng.random() < 0.8:
            await self.clock.sleep(0.05)
            raise ModelError("429 Too Many Requests", kind=ErrorKind.RATE_LIMITED, retry_after=2.0)
        if mode == "down":
            if self.rng.random() < 0.3:
                await self.clock.sleep(10.0)
                raise TimeoutError("no answer within 10s")
            await self.clock.sleep(0.2)
            raise ModelError("503 Service Unavailable", kind=ErrorKind.SERVER)
        if mode == "wobbly" and self.rng.random() < 0.5:
            await self.clock.sleep(0.3)
            raise ModelError("502 Bad Gateway", kind=ErrorKind.SERVER)
        latency = self.rng.lognormvariate(math.log(self.latency), 0.4)
        await self.clock.sleep(latency)
        words = len(prompt.split())
        return ModelResponse(
            text=f"[{self.name}] summary: {prompt[:40]}",
            model=self.name,
            finish_reason="stop",
            usage=Usage(input_tokens=words * 2, output_tokens=60),
            latency=latency,
        )

    async def health_check(self) -> bool:
        """False while the script says the model is down."""
        await self.clock.sleep(0.05)
        return self.mode(self.clock.now) != "down"


@dataclass(frozen=True)
class Act:
    """A moment of the story, told when the virtual clock reaches it."""

    at: float
    text: str


STORY: Final = (
    Act(0.0, "all three models healthy; calls go to the primary"),
    Act(RATE_LIMITED_AT, "the primary starts rate-limiting (429, retry after 2s)"),
    Act(DOWN_AT, "the primary goes down (503s and timeouts); the secondary takes over"),
    Act(RECOVERED_AT, "the primary recovers; a trial call or a probe brings it back at once"),
    Act(MAINTENANCE_ON_AT, "an operator puts the secondary into maintenance (key rotation)"),
    Act(WOBBLE_AT, "the primary wobbles (502s); with the secondary out, the tertiary covers"),
    Act(MAINTENANCE_OFF_AT, "the operator puts the secondary back"),
)


def prepare_log(path: Path) -> None:
    """Make room for the demo's log: replace an earlier demo log, refuse anything else.

    Model ids prove nothing (a service may call its models primary and secondary too): only
    the demo's own mark in the log does.
    """
    if path.is_dir():
        raise DemoError(f"{path} is a directory; give --log a file path")
    if path.exists() or path.is_symlink():
        if not written_by_demo(path):
            raise DemoError(
                f"{path} exists and was not written by the demo; the demo only replaces its "
                "own logs: choose another --log"
            )
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm")):
        # A journal without its database belongs to someone; a new log would adopt it.
        raise DemoError(f"{path}-wal or {path}-shm exists without {path}; choose another --log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file stands where a folder of the path should be
        blocker = exc.filename
        raise DemoError(f"cannot create {path}: {blocker} is a file, not a directory") from None
    except OSError as exc:
        raise DemoError(f"cannot create {path}: {exc.strerror or exc} ({exc.filename})") from None


def written_by_demo(path: Path) -> bool:
    """True when ``path`` is an SQLite event log that carries the demo's mark.

    Read as immutable: no lock is taken and neither the file nor its -wal/-shm is touched
    (a log another process has open may keep its newest pages in the WAL; the mark, written
    when the demo creates the log, is in the database file by then).
    """
    if not is_sqlite(path):
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (MARK_KEY,)).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return row is not None and row[0] == MARK


def create_marked_log(path: Path) -> None:
    """Create the demo's empty event log at ``path`` and mark it as the demo's."""
    SQLiteEventStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (MARK_KEY, MARK))


@dataclass
class Tally:
    """What the demo's caller saw."""

    calls: int = 0
    failed: int = 0
    served: dict[str, int] = field(default_factory=dict)


class _Narrator:
    """Tells the story: a progress bar on a terminal, plain lines elsewhere."""

    def __init__(self, out: Output, clock: VirtualClock) -> None:
        self.out = out
        self.clock = clock
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if out.rich:
            self.progress = Progress(
                TextColumn("[bold]incident[/] {task.description}"),
                BarColumn(),
                TextColumn("{task.fields[calls]} calls"),
                console=out.console,
                transient=True,
            )

    def __enter__(self) -> _Narrator:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("t+00:00", total=DURATION, calls=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def tell(self, act: Act) -> None:
        minutes, seconds = divmod(int(act.at), 60)
        text = f"{clock_text(self.clock.wall())}  t+{minutes:02d}:{seconds:02d}  {act.text}"
        if self.progress is not None:
            self.progress.console.print(Text(text))
        else:
            self.out.text(text)

    def advance(self, calls: int) -> None:
        if self.progress is not None and self.task is not None:
            minutes, seconds = divmod(int(self.clock.now), 60)
            self.progress.update(
                self.task,
                completed=min(self.clock.now, DURATION),
                description=f"t+{minutes:02d}:{seconds:02d}",
                calls=calls,
            )


async def play(path: Path, *, seed: int, out: Output, end: datetime | None = None) -> Tally:
    """Run the scripted incident into the log at ``path``; the log's last event is at ``end``."""
    finish = end if end is not None else datetime.now(UTC).replace(microsecond=0)
    clock = VirtualClock(finish - timedelta(seconds=DURATION))
    rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
    modes = {"primary": primary_mode, "secondary": steady, "tertiary": steady}
    latencies = {"primary": 0.6, "secondary": 1.1, "tertiary": 1.6}
    clients = {
        name: SimulatedModel(f"sim-{name}", clock, rng, modes[name], latencies[name])
        for name in MODELS
    }
    fo = MultiModelFailover(
        clients,
        {"max_attempts": 2, "base_delay": 0.5, "max_delay": 4, "call_budget": 60},
        health_check_interval=30,
        health_policy={"degraded_after": 1, "unhealthy_after": 3},
        event_store=str(path),
        sleep=clock.sleep,
        clock=clock.monotonic,
        wall_clock=clock.wall,
        rng=random.Random(seed + 1),  # noqa: S311 - jitter, not cryptography
        durability="buffered",
    )
    tally = Tally()
    story = list(STORY)
    next_probe = 0.0
    try:
        with _Narrator(out, clock) as narrator:
            while clock.now < DURATION:
                while story and story[0].at <= clock.now:
                    act = story.pop(0)
                    narrator.tell(act)
                    await _operator(fo, act)
                if clock.now >= next_probe:
                    await fo.check_health()
                    next_probe += fo.health_check_interval
                await _one_call(fo, tally)
                narrator.advance(tally.calls)
                await clock.sleep(rng.uniform(0.5, 1.5) * CALL_GAP)
    finally:
        await fo.aclose()
    return tally


async def _operator(fo: MultiModelFailover, act: Act) -> None:
    if act.at == MAINTENANCE_ON_AT:
        await fo.set_maintenance("secondary", True, reason="rotating API key", by="alice (demo)")
    elif act.at == MAINTENANCE_OFF_AT:
        await fo.set_maintenance("secondary", False, reason="key rotated", by="alice (demo)")


async def _one_call(fo: MultiModelFailover, tally: Tally) -> None:
    tally.calls += 1
    try:
        outcome = await fo.call_with_outcome(f"Summarise support ticket #{tally.calls}")
    except AllModelsFailedError:
        tally.failed += 1
        return
    tally.served[outcome.model_id] = tally.served.get(outcome.model_id, 0) + 1


def run_demo(path: Path, *, seed: int, out: Output) -> None:
    """Play the incident into ``path``, then print what happened and what to try next."""
    prepare_log(path)
    create_marked_log(path)
    out.heading("A scripted incident on three simulated models (virtual time, no network)")
    tally = anyio.run(lambda: play(path, seed=seed, out=out))
    served = ", ".join(f"{n} by {m}" for m, n in sorted(tally.served.items()))
    out.text(f"{tally.calls} calls: {served}; {tally.failed} failed. Log written to {path}.")
    with SQLiteEventStore(path, create=False) as store:
        summarise(store, out)
    try_next(path, out)


def summarise(store: SQLiteEventStore, out: Output) -> None:
    """The timeline summary (state changes, operator actions, failovers), states, metrics."""
    out.heading("What happened (state changes and operator actions)")
    out.lines(
        describe(e)
        for e in read_events(store, pinned(store, types=("state_changed", "maintenance")))
    )
    failovers = list(read_events(store, pinned(store, types=("failover",))))
    if failovers:
        pairs: dict[str, int] = {}
        for event in failovers:
            key = f"{getattr(event, 'from_model', '')} -> {getattr(event, 'to_model', '')}"
            pairs[key] = pairs.get(key, 0) + 1
        listed = ", ".join(f"{n} x {pair}" for pair, n in pairs.items())
        out.text(
            f"{len(failovers)} failovers ({listed}) between {clock_text(failovers[0].at)} "
            f"and {clock_text(failovers[-1].at)}"
        )
    out.heading("States now")
    print_states(out, store, None)
    out.heading("Metrics")
    print_metrics(out, snapshot_at(store))


def try_next(path: Path, out: Output) -> None:
    """The commands worth trying on the demo's log."""
    with SQLiteEventStore(path, create=False) as store:
        start = store.at_time(store.query("SELECT min(at) FROM events")[0][0])
    outage = _iso(start + timedelta(seconds=(DOWN_AT + RECOVERED_AT) / 2))
    window = (
        _iso(start + timedelta(seconds=DOWN_AT - 60)),
        _iso(start + timedelta(seconds=DOWN_AT + 60)),
    )
    log = str(path)
    out.heading("Try next on this log (times are UTC)")
    for command in (
        f"failover timeline {log} --type failover,state_changed,maintenance",
        f"failover timeline {log} --model primary --since {window[0]} --until {window[1]}",
        f"failover state {log} --at {outage}    # mid-outage: the primary is unhealthy",
        f"failover state {log} --at -5m",
        f"failover metrics {log} --format prometheus",
        f"failover audit {log}",
        f"failover report {log} -o incident.html",
        f"failover maintenance on tertiary --log {log} --reason 'try it' --by you",
    ):
        out.text(f"  {command}")


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["DemoError", "SimulatedModel", "VirtualClock", "play", "run_demo"]
