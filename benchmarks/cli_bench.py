"""How fast the `failover` command line answers on a large event log.

Builds a synthetic log of N events (default 1,000,000) through the store itself (``buffered``
appends: rows, indexes and snapshots as the engine writes them), then times `timeline`,
`state`, `metrics` and `audit` as a user runs them: a fresh `failover` process each, its
output redirected to a file. Prints one line per command. Usage::

    python benchmarks/cli_bench.py [--events N] [--log PATH] [--keep]
    python benchmarks/cli_bench.py --archived [--events N] [--log-dir DIR]

``--archived`` also times each command on a copy of the log whose first half (the events
before its middle event's time) was moved out by ``failover archive``'s code, side by side
(``just bench`` does this on its largest log).

A ``--log`` that already holds N benchmark events is reused rather than rebuilt.

The log mimics a day of traffic on three models: mostly clean calls, bursts where the primary
rate-limits or fails (retries, backoffs, failovers, state changes), probes and a maintenance
window. Everything is seeded, so two runs build the same log.
"""

from __future__ import annotations

import argparse
import itertools
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devs.risks.multi_model_failover.core.errors import ErrorKind
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    StateChanged,
)
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.storage.snapshots import SNAPSHOT_EVERY
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

MODELS = ("primary", "secondary", "tertiary")
START = datetime(2024, 5, 1, tzinfo=UTC)
WRITER = "bench0000000"


class _Script:
    """Generates a plausible stream of events, in order, with wall-clock stamps."""

    def __init__(self, seed: int, span: timedelta, events: int) -> None:
        self.rng = random.Random(seed)
        self.now = START
        # About four events per call: spread the calls over the span.
        self.step = span / max(1, events // 4)
        self.calls = 0
        self.primary = HealthState.HEALTHY

    def tick(self, seconds: float = 0.0) -> datetime:
        self.now += timedelta(seconds=seconds) if seconds else self.step / 4
        return self.now

    def events(self) -> Iterator[Event]:
        yield EngineStarted(at=self.tick(), models=MODELS)
        while True:
            self.calls += 1
            yield from self._call()
            if self.calls % 50 == 0:
                yield from self._probes()
            if self.calls % 20_000 == 0:
                yield from self._maintenance()

    def _state(self, model_id: str, to: HealthState, reason: str) -> Iterator[Event]:
        if self.primary is to:
            return
        yield StateChanged(
            at=self.tick(), model_id=model_id, from_state=self.primary, to_state=to, reason=reason
        )
        self.primary = to

    def _call(self) -> Iterator[Event]:
        call_id = f"bench-{self.calls}"
        yield CallStarted(at=self.tick(), call_id=call_id, order=MODELS[:2])
        trouble = (self.calls // 2_000) % 10 == 7  # 2,000 calls in every 20,000: an incident
        model = "primary"
        attempts = 0
        failovers = 0
        if trouble or self.rng.random() < 0.02:
            for attempt in (1, 2):
                attempts += 1
                yield AttemptStarted(
                    at=self.tick(), call_id=call_id, model_id=model, attempt=attempt
                )
                kind = self.rng.choice([ErrorKind.RATE_LIMITED, ErrorKind.SERVER])
                final = attempt == 2
                yield AttemptFailed(
                    at=self.tick(),
                    call_id=call_id,
                    model_id=model,
                    attempt=attempt,
                    latency=self.rng.uniform(0.05, 2.0),
                    error_kind=kind,
                    message="503 Service Unavailable",
                    final=final,
                )
                if not final:
                    yield Backoff(
                        at=self.tick(),
                        call_id=call_id,
                        model_id=model,
                        attempt=attempt,
                        delay=self.rng.uniform(0.1, 1.0),
                    )
            yield Failover(
                at=self.tick(),
                call_id=call_id,
                from_model="primary",
                to_model="secondary",
                reason=ErrorKind.SERVER,
            )
            failovers = 1
            model = "secondary"
            if trouble:
                yield from self._state("primary", HealthState.DEGRADED, "1 failed call(s) in a row")
        elif self.primary is not HealthState.HEALTHY:
            yield from self._state("primary", HealthState.HEALTHY, "a call succeeded")
        attempts += 1
        yield AttemptStarted(at=self.tick(), call_id=call_id, model_id=model, attempt=1)
        latency = self.rng.lognormvariate(-1.0, 0.6)
        yield AttemptSucceeded(
            at=self.tick(latency), call_id=call_id, model_id=model, attempt=1, latency=latency
        )
        yield CallSucceeded(
            at=self.tick(),
            call_id=call_id,
            model_id=model,
            attempts=attempts,
            failovers=failovers,
            latency=latency,
        )

    def _probes(self) -> Iterator[Event]:
        for model_id in MODELS:
            yield HealthProbe(at=self.tick(), model_id=model_id, ok=True, latency=0.05)

    def _maintenance(self) -> Iterator[Event]:
        yield Maintenance(
            at=self.tick(), model_id="tertiary", on=True, reason="key rotation", by="bench"
        )
        yield Maintenance(
            at=self.tick(60), model_id="tertiary", on=False, reason="done", by="bench"
        )


def build_log(path: Path, events: int, *, seed: int = 1) -> Path:
    """Write a synthetic event log of ``events`` events at ``path`` (replacing it), through the
    store itself (rows, snapshots and indexes as the engine writes them).

    A live store takes a periodic snapshot every ``SNAPSHOT_EVERY`` events on a thread of its
    own; at the build's pace (tens of thousands of events a second) that thread would fall
    behind and leave them 100,000 or more apart. The build takes them itself, every
    ``SNAPSHOT_EVERY`` events, as a log written at a production pace holds them."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    script = _Script(seed, timedelta(days=1), events)
    with SQLiteEventStore(path, durability="buffered", writer=WRITER, snapshot_every=None) as store:
        for n, event in enumerate(itertools.islice(script.events(), events), 1):
            store.append(event)
            if n % SNAPSHOT_EVERY == 0:
                store.flush(timeout=None)
                store.snapshots.take("periodic")
        store.flush(timeout=None)
        store.snapshots.take("close")
    return path


def _holds(log: Path, events: int) -> bool:
    """Whether ``log`` is already a benchmark log of ``events`` events (kept with --keep)."""
    if not log.is_file():
        return False
    try:
        with SQLiteEventStore(log, create=False) as store:
            return store.count() == events and store.last_seq() == events
    except ValueError:  # EventLogError: not a log, or not ours
        return False


def _time(args: list[str], sink: Path) -> tuple[float, int]:
    """Seconds one `failover` process takes with its output going to a file, and its lines."""
    command = [sys.executable, "-m", "devs.risks.multi_model_failover.adapters.cli", *args]
    with sink.open("wb") as out:
        started = time.perf_counter()
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, check=False)  # noqa: S603 - our own CLI
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.decode().strip()}")
    with sink.open("rb") as printed:
        return elapsed, sum(
            chunk.count(b"\n") for chunk in iter(lambda: printed.read(1 << 20), b"")
        )


def event_time(log: Path, fraction: float) -> datetime:
    """The time of the event ``fraction`` of the way into ``log`` (by seq)."""
    with SQLiteEventStore(log, create=False) as store:
        seq = max(1, int(store.last_seq() * fraction))
        event = next(store.read(after=seq - 1, where="seq <= ?", params=(seq,)))
    return event.at


def cases(
    log: Path,
    archive: Path | None = None,
    *,
    middle: datetime | None = None,
    quarter: datetime | None = None,
) -> list[list[str]]:
    """The commands timed, as argument lists. ``middle`` and ``quarter`` (default: noon and
    6 am of the log's first day) are instants commands ask about; ``archive``: the log was
    archived into that file before ``middle`` (then the two commands about ``quarter`` read it
    with ``--archive``)."""
    middle = middle or START + timedelta(hours=12)
    quarter = quarter or START + timedelta(hours=6)
    return _cases(log, archive, middle.isoformat(), quarter.isoformat())


def _cases(log: Path, archive: Path | None, middle: str, morning: str) -> list[list[str]]:
    reading = ["--archive", str(archive)] if archive is not None else []
    return [
        ["timeline", str(log)],
        ["timeline", str(log), "--type", "failover"],
        ["timeline", str(log), "--model", "secondary", "--since", middle],
        ["timeline", str(log), "--call", "bench-12345"],
        ["state", str(log), "--at", middle],
        ["state", str(log)],
        ["metrics", str(log)],
        ["metrics", str(log), "--at", middle, "--format", "prometheus"],
        ["audit", str(log)],
        ["state", str(log), "--at", morning, *reading],
        ["metrics", str(log), "--at", morning, *reading],
    ]


@dataclass(frozen=True)
class Timed:
    """One command: how it reads (``LOG`` and ``ARCHIVE`` for the paths), seconds, lines out."""

    command: str
    seconds: float
    lines: int


def shown(args: list[str], log: Path, archive: Path | None = None, **instants: datetime) -> str:
    """``failover ...`` with the log's path as LOG, the archive's as ARCHIVE, and each of
    ``instants`` as its name in capitals."""
    names = {str(log): "LOG", str(archive): "ARCHIVE"}
    names.update({at.isoformat(): name.upper() for name, at in instants.items()})
    return "failover " + " ".join(names.get(a, a) for a in args)


def time_cases(log: Path, folder: Path, archive: Path | None = None) -> list[Timed]:
    """Each command of ``cases`` once, a fresh process each, its output into a file."""
    found = []
    sink = folder / "output.txt"
    try:
        for args in cases(log, archive):
            elapsed, printed = _time(args, sink)
            found.append(Timed(shown(args, log, archive), elapsed, printed))
    finally:
        sink.unlink(missing_ok=True)
    return found


def compare(log: Path, archived: Path, archive: Path, folder: Path) -> list[tuple[Timed, Timed]]:
    """Each command on ``log`` and on ``archived`` (the same log with its events before its
    middle event moved into ``archive``), side by side; the two runs of a command follow each
    other. MIDDLE is the time of the middle event (the cut), QUARTER that of the event a
    quarter of the way in (archived)."""
    at = {"middle": event_time(log, 0.5), "quarter": event_time(log, 0.25)}
    pairs = []
    sink = folder / "output.txt"
    try:
        for plain, cut in zip(cases(log, **at), cases(archived, archive, **at), strict=True):
            seconds, lines = _time(plain, sink)
            a = Timed(shown(plain, log, **at), seconds, lines)
            seconds, lines = _time(cut, sink)
            pairs.append((a, Timed(shown(cut, archived, archive, **at), seconds, lines)))
    finally:
        sink.unlink(missing_ok=True)
    return pairs


def main() -> None:
    """Build the log, time each command, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the log afterwards (a later --log reuses it)"
    )
    parser.add_argument(
        "--archived",
        action="store_true",
        help="also time each command on a copy of the log whose first half is archived, "
        "side by side",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="with --archived: keep and reuse the logs here"
    )
    options = parser.parse_args()
    if options.archived:
        _main_archived(options.events, options.log_dir)
        return
    folder = tempfile.mkdtemp(prefix="failover-cli-bench-")
    log = options.log or Path(folder) / "events.sqlite3"
    size = log.stat().st_size / 2**20 if log.exists() else 0.0
    if _holds(log, options.events):
        print(f"reusing {log}: {options.events:,} events ({size:.0f} MiB)")
    else:
        started = time.perf_counter()
        build_log(log, options.events)
        built = time.perf_counter() - started
        size = log.stat().st_size / 2**20
        print(f"built {options.events:,} events in {built:.1f}s ({size:.0f} MiB) at {log}")
    print(f"{'seconds':>8}  {'lines out':>10}  command")
    worst = 0.0
    for found in time_cases(log, Path(folder)):
        worst = max(worst, found.seconds)
        print(f"{found.seconds:8.2f}  {found.lines:>10,}  {found.command}")
    print(f"slowest: {worst:.2f}s (target: under 5s each on a 2-core machine)")
    if not options.keep and options.log is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{log}{suffix}").unlink(missing_ok=True)
    Path(folder).rmdir()


def _main_archived(events: int, log_dir: Path | None) -> None:
    """The commands on the log and on its half-archived copy, side by side."""
    from log_scale import LogCache  # noqa: PLC0415 - it imports this module

    with tempfile.TemporaryDirectory(prefix="failover-cli-bench-") as tmp:
        cache = LogCache(log_dir or Path(tmp))
        log = cache.log(events)
        archived, archive, figures = cache.archived(events)
        if figures is not None:
            print(
                f"archived {figures.moved:,} of {events:,} events in {figures.seconds:.1f}s: "
                f"{figures.size_before / 2**20:.0f} MiB -> {figures.size_after / 2**20:.0f} MiB"
            )
        print(f"{'whole':>8}  {'archived':>8}  {'lines':>10}  {'lines':>10}  command")
        for whole, cut in compare(log, archived, archive, Path(tmp)):
            print(
                f"{whole.seconds:8.2f}  {cut.seconds:8.2f}  {whole.lines:>10,}  {cut.lines:>10,}"
                f"  {cut.command}"
            )


if __name__ == "__main__":
    main()
