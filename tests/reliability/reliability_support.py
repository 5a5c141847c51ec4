"""Shared fakes and probes of the reliability tests: scripted clients, leak checks, log reads."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio

from devs.risks.multi_model_failover import ErrorKind, Event, ModelError, SQLiteEventStore
from devs.risks.multi_model_failover.core.events import TERMINAL_TYPES

HERE = Path(__file__).parent
WORKER = HERE / "reliability_worker.py"

# Threads that anyio and trio keep idle for a while after a `to_thread` hop; they are a pool,
# not a leak, and exit on their own after their idle time.
POOL_THREAD_PREFIXES = ("AnyIO worker thread", "Trio thread")

FAILURES: tuple[BaseException, ...] = (
    ModelError("upstream 503", kind=ErrorKind.SERVER),
    ModelError("slow down", kind=ErrorKind.RATE_LIMITED, retry_after=0.001),
    ModelError("read timed out", kind=ErrorKind.TIMEOUT),
    TimeoutError("socket timeout"),
    RuntimeError("connection reset by peer"),
)


class FlakyClient:
    """An async model client scripted by a seeded random source.

    Each call sleeps 0-2 ms, then fails with one of ``FAILURES`` (probability ``error_rate``),
    hangs until the engine's attempt timeout cancels it (``hang_rate``) or answers.
    """

    def __init__(
        self, model_id: str, seed: int, *, error_rate: float = 0.0, hang_rate: float = 0.0
    ) -> None:
        self.model_id = model_id
        self.error_rate = error_rate
        self.hang_rate = hang_rate
        self.calls = 0
        self.probes = 0
        self._rng = random.Random(seed)

    async def call(self, prompt: Any) -> str:
        """Answer after a random latency, or fail, or hang, as the script draws."""
        self.calls += 1
        draw = self._rng.random()
        failure = self._rng.choice(FAILURES)
        await anyio.sleep(self._rng.uniform(0, 0.002))
        if draw < self.hang_rate:
            await anyio.sleep_forever()
        if draw < self.hang_rate + self.error_rate:
            raise failure
        return f"{self.model_id} answered"

    async def health_check(self) -> bool:
        """Always healthy; counts the probes."""
        self.probes += 1
        await anyio.lowlevel.checkpoint()
        return True


class ScriptedClient:
    """An async client whose call and probe are coroutines the test passes in."""

    def __init__(self, model_id: str, call: Any = None, probe: Any = None) -> None:
        self.model_id = model_id
        self._call = call
        self._probe = probe
        self.calls = 0
        self.probes = 0

    async def call(self, prompt: Any) -> Any:
        """Run the scripted call, or answer with the model id."""
        self.calls += 1
        if self._call is None:
            await anyio.lowlevel.checkpoint()
            return f"{self.model_id} answered"
        return await self._call(prompt)

    async def health_check(self) -> bool:
        """Run the scripted probe, or say healthy."""
        self.probes += 1
        if self._probe is None:
            await anyio.lowlevel.checkpoint()
            return True
        return bool(await self._probe())


def running_tasks() -> int:
    """How many tasks the running event loop has (asyncio or trio)."""
    return len(anyio.get_running_tasks())


def own_threads() -> set[str]:
    """Names of live threads that are not the async libraries' idle worker pools."""
    return {
        t.name
        for t in threading.enumerate()
        if t.is_alive() and not t.name.startswith(POOL_THREAD_PREFIXES)
    }


def threads_settled(baseline: set[str], timeout: float = 5.0) -> set[str]:
    """The threads beyond ``baseline`` still alive after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        extra = own_threads() - baseline
        if not extra or time.monotonic() >= deadline:
            return extra
        time.sleep(0.02)


def read_all(path: str | Path, *, lenient: bool = False) -> list[Event]:
    """Every event of the log at ``path``, oldest first (opens it read-only)."""
    with SQLiteEventStore(path, create=False) as store:
        return list(store.read(lenient=lenient))


def stored_seqs(path: str | Path) -> list[int]:
    """The ``seq`` column of the log, straight from SQLite."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]


def terminal_types_by_call(events: Iterable[Event]) -> dict[str, list[str]]:
    """For each call id, the types of its terminal events in log order."""
    found: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event.type in TERMINAL_TYPES:
            found[event.call_id].append(event.type)  # type: ignore[union-attr]
    return found


def started_calls(events: Iterable[Event]) -> list[str]:
    """The call ids of every ``call_started`` event."""
    return [e.call_id for e in events if e.type == "call_started"]  # type: ignore[union-attr]


def assert_one_terminal_each(events: list[Event]) -> Counter[str]:
    """Every started call has exactly one outcome: one terminal event, or one followed by a
    ``call_cancelled`` that supersedes it (the caller was cancelled while it was committed).
    Returns the count of outcomes per type."""
    started = started_calls(events)
    assert len(started) == len(set(started)), "a call id was started twice"
    terminals = terminal_types_by_call(events)
    assert set(terminals) == set(started), "a terminal event without a start, or the reverse"
    superseding = {
        e.call_id: e.supersedes  # type: ignore[union-attr]
        for e in events
        if e.type == "call_cancelled" and e.supersedes  # type: ignore[union-attr]
    }
    broken = {
        cid: types
        for cid, types in terminals.items()
        if not (len(types) == 1 or (len(types) == 2 and superseding.get(cid) == types[0]))
    }
    assert not broken, f"calls without exactly one outcome: {list(broken.items())[:5]}"
    return Counter(types[-1] for types in terminals.values())


def spawn_worker(*args: str) -> subprocess.Popen[str]:
    """Start ``reliability_worker.py`` with ``args``; its stdout is a text pipe."""
    return subprocess.Popen(  # noqa: S603 - our own script, fixed interpreter
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def eventually(predicate: Callable[[], bool], *, guard: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; ``guard`` seconds is a hang guard, not a timing.

    The state it watches changes in another thread or process, which cannot set an
    ``anyio.Event`` of ours, so polling is the honest way to wait for it.
    """
    with anyio.fail_after(guard):
        while not predicate():  # noqa: ASYNC110 - see the docstring
            await anyio.sleep(0.01)
