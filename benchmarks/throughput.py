"""The event log's throughput and the engine's memory per in-flight call.

- Sustained appends: events go into a log (``buffered``: an SQLite file, or PostgreSQL) for a
  fixed wall-clock time, the producer at most two windows ahead of the writer; the rate counts
  committed events.
- Replay: a log of N events folded into metrics from its first event with
  ``replay(path or url, from_start=True)`` (read + decode + fold: a plain ``replay`` starts
  from the snapshot the log took at close, see ``log_scale``), and the fold alone over already
  decoded events; timed by pyperf.
- Memory: N calls held in flight (their client awaits an ``anyio.Event``) under tracemalloc;
  the engine's figure next to the same calls made on the bare client and through the floor.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyperf
from contenders import ATTEMPT_TIMEOUT, HEALTH, Floor
from fakes import HAPPY, PROMPT, FakeClient, HeldClient

from devs.risks.multi_model_failover import (
    ErrorKind,
    MultiModelFailover,
    RetryPolicy,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.adapters.facade import is_postgres_url
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    CallStarted,
    CallSucceeded,
    Event,
    Failover,
)
from devs.risks.multi_model_failover.core.projections import fold
from devs.risks.multi_model_failover.storage import GroupCommitStore

Source = Path | str  # an SQLite file, or a postgresql:// URL


def open_log(source: Source, *, create: bool = True) -> GroupCommitStore:
    """A ``buffered`` store on ``source`` (the writer side), or a reader with ``create=False``."""
    if is_postgres_url(source):
        from devs.risks.multi_model_failover.storage.postgres import (  # noqa: PLC0415
            PostgresEventStore,
        )

        return PostgresEventStore(str(source), durability="buffered", create=create)
    return SQLiteEventStore(source, durability="buffered", create=create)


def sample_events(calls: int, first: int = 1, prefix: str = "5f3a9c1e") -> list[Event]:
    """The events of ``calls`` calls: nine in ten succeed at once, one in ten fails over.

    Call ids are unique and shaped as the engine makes them (``prefix-n``).
    """
    at = datetime.now(UTC)
    events: list[Event] = []
    for n in range(first, first + calls):
        call_id = f"{prefix}-{n}"
        events.append(CallStarted(at=at, call_id=call_id, order=("primary", "secondary")))
        model = "primary"
        if n % 10 == 9:
            events += [
                AttemptStarted(at=at, call_id=call_id, model_id=model, attempt=1),
                AttemptFailed(
                    at=at,
                    call_id=call_id,
                    model_id=model,
                    attempt=1,
                    latency=0.2,
                    error_kind=ErrorKind.SERVER,
                    message="upstream overloaded",
                    final=True,
                ),
                Failover(
                    at=at,
                    call_id=call_id,
                    from_model=model,
                    to_model="secondary",
                    reason=ErrorKind.SERVER,
                ),
            ]
            model = "secondary"
        events += [
            AttemptStarted(at=at, call_id=call_id, model_id=model, attempt=1),
            AttemptSucceeded(at=at, call_id=call_id, model_id=model, attempt=1, latency=0.4),
            CallSucceeded(
                at=at,
                call_id=call_id,
                model_id=model,
                attempts=1 + (model == "secondary"),
                failovers=int(model == "secondary"),
                latency=0.6,
            ),
        ]
    return events


@dataclass(frozen=True)
class AppendResult:
    """Sustained append figures."""

    seconds: float
    events: int
    producer_us: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def sustained_appends(source: Source, seconds: float, *, window_calls: int = 5_000) -> AppendResult:
    """Append into a ``buffered`` log for ``seconds``; committed events per second.

    The producer makes a window of events (new call ids each time, as the engine would),
    appends it, waits for the window before it to be committed, and goes on: the writer
    always has work and the backlog stays under two windows. ``producer_us`` is the caller's
    cost of one ``append``.
    """
    store = open_log(source)
    append = store.append
    produced = 0
    producer = 0.0
    calls = 0
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        deadline = start + seconds
        pending = None
        while time.perf_counter() < deadline:
            window = sample_events(window_calls, first=calls + 1)
            calls += window_calls
            begin = time.perf_counter()
            for event in window:
                append(event)
            producer += time.perf_counter() - begin
            produced += len(window)
            if pending is not None:
                pending.result()
            pending = pool.submit(store.flush, 60.0)
        if pending is not None:
            pending.result()
        if not store.flush(60.0):
            raise RuntimeError(f"the log did not commit every event: {store.last_error}")
        elapsed = time.perf_counter() - start
    store.close()
    if store.dropped or store.errors:
        raise RuntimeError(
            f"append test lost events: dropped={store.dropped} errors={store.errors}"
        )
    return AppendResult(elapsed, produced, producer / produced * 1e6)


def write_log(source: Source, events: int) -> int:
    """A log of ``events`` events; returns how many the log holds."""
    with open_log(source) as store:
        written = 0
        while written < events:
            window = sample_events(5_000, first=written + 1)[: events - written]
            for event in window:
                store.append(event)
            written += len(window)
        store.flush(300.0)
        return store.count()


def replay_benchmarks(
    runner: pyperf.Runner, source: Source, events: int, *, label: str = ""
) -> dict[str, Any]:
    """pyperf benchmarks of ``replay(source, from_start=True)`` (every event read, decoded and
    folded) and of the fold alone; events per second."""
    snapshot = replay(source, from_start=True)
    if snapshot.events != events:
        raise RuntimeError(f"replay folded {snapshot.events} events, the log has {events}")
    with open_log(source, create=False) as reader:
        decoded = list(reader.read())
    results: dict[str, Any] = {"events": events, "calls": snapshot.metrics.calls}
    for name, func in (
        ("replay", lambda: replay(source, from_start=True)),
        ("fold", lambda: fold(decoded)),
    ):
        bench = runner.bench_func(f"{label}{name}/{events}", func)
        if bench is None:
            raise RuntimeError(f"pyperf returned no result for {name}")
        results[name] = bench
        results[f"{name}_rate"] = events / bench.median()
    return results


async def _held_memory(n: int, start: Callable[[HeldClient], Callable[[], Awaitable[Any]]]) -> int:
    """Bytes traced while ``n`` calls made by ``start(client)`` are all in flight."""
    release = anyio.Event()
    held = HeldClient("primary", release, n)
    call = start(held)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.ensure_future(call()) for _ in range(n)]
    await held.all_in.wait()
    flush = getattr(call, "flush", None)
    if flush is not None:
        flush()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    release.set()
    await asyncio.gather(*tasks)
    return used


def in_flight_memory(workdir: Path, n: int) -> dict[str, float]:
    """KiB per in-flight call: the bare client, the floor, and the engine (buffered file log)."""
    engines: list[MultiModelFailover] = []

    def bare(held: HeldClient) -> Callable[[], Awaitable[Any]]:
        return lambda: held.call(PROMPT)

    def floor(held: HeldClient) -> Callable[[], Awaitable[Any]]:
        contender = Floor(HAPPY)
        contender.clients = [held, FakeClient("secondary")]
        return lambda: contender.call(PROMPT)

    def engine(held: HeldClient) -> Callable[[], Awaitable[Any]]:
        fo = MultiModelFailover(
            [held, FakeClient("secondary")],
            RetryPolicy(attempt_timeout=ATTEMPT_TIMEOUT),
            health_policy=HEALTH,
            event_store=os.fspath(workdir / "in-flight.sqlite3"),
            durability="buffered",
        )
        engines.append(fo)

        def call() -> Awaitable[Any]:
            return fo.call(PROMPT)

        # Drain the writer's queue before measuring: queued events are the log's, not the call's.
        call.flush = fo.event_store.flush  # type: ignore[attr-defined]
        return call

    async def main() -> dict[str, float]:
        figures = {}
        for name, start in (("bare client", bare), ("floor", floor), ("engine", engine)):
            figures[name] = await _held_memory(n, start) / n / 1024
        for fo in engines:
            await fo.aclose()
        return figures

    return asyncio.run(main())
