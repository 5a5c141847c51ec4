"""Hostile checks of the start-up, sync-client and archive-pace promises in the docs."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from tests.core.fakes import FakeModelClient, SyncFakeModelClient, hang

from devs.risks.multi_model_failover import MultiModelFailover
from devs.risks.multi_model_failover.storage.archive import archive
from devs.risks.multi_model_failover.storage.snapshots import Pace
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

RETRY = {"jitter": "none", "max_attempts": 1, "base_delay": 0.0}
N_CALLS = 300


def _fo(path: Path, clients: dict[str, object] | None = None, **kw: object) -> MultiModelFailover:
    clients = clients or {"a": FakeModelClient(), "b": FakeModelClient()}
    return MultiModelFailover(clients, RETRY, event_store=str(path), **kw)  # type: ignore[arg-type]


async def _seed(path: Path, calls: int = N_CALLS) -> None:
    fo = _fo(path)
    async with fo:
        for i in range(calls):
            await fo.call(f"p{i}")


async def _reference(path: Path) -> int:
    """Calls in the log, as a fresh engine's blocking load sees them."""
    fo = _fo(path)
    try:
        return fo.metrics().calls
    finally:
        await fo.aclose()


# -- start-up: cancellation at each step ----------------------------------------------------


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 8, 13, 30])
@pytest.mark.parametrize("how", ["aenter", "call", "check_health", "set_maintenance", "follow"])
async def test_cancelled_load_leaves_nothing_half_loaded(
    tmp_path: Path, anyio_backend: str, how: str, steps: int
) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path)
    fo = _fo(path)

    async def first_use() -> None:
        if how == "aenter":
            async with fo:
                await anyio.sleep_forever()
        elif how == "call":
            await fo.call("x")
        elif how == "check_health":
            await fo.check_health()
        elif how == "set_maintenance":
            await fo.set_maintenance("a", True)
        else:
            await fo.follow()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_use)
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        if fo.closed:
            return  # "the engine closes"
        # "or the next use loads again": the history is there, once.
        await fo.call("after")
        m = fo.metrics()
        extra = 1 if how == "call" and m.calls == N_CALLS + 2 else 0
        assert m.calls == N_CALLS + 1 + extra
        assert m.calls_succeeded + m.calls_cancelled + m.calls_failed == m.calls
    finally:
        await fo.aclose()


@pytest.mark.parametrize("steps", [0, 1, 3, 10])
async def test_aclose_racing_a_load(tmp_path: Path, anyio_backend: str, steps: int) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path)
    fo = _fo(path)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await fo.call("x")
        except Exception as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            await fo.aclose()
    assert fo.closed
    for exc in errors:
        assert type(exc).__name__ in {"EngineClosedError"}, repr(exc)
    # the log is whole afterwards
    assert await _reference(path) >= N_CALLS


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 4, 6, 10, 20])
async def test_sync_accessors_during_load_fold_own_events_once(
    tmp_path: Path, anyio_backend: str, steps: int
) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path)
    fo = _fo(path)
    try:
        seen: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(fo.call, "x")
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            fo.states  # noqa: B018 - blocking load, mid async load
            seen.append(fo.metrics().calls)
            fo.snapshot()
            fo.rotation  # noqa: B018
        seen.append(fo.metrics().calls)
        assert seen[-1] == N_CALLS + 1
        assert all(n in (N_CALLS, N_CALLS + 1) for n in seen)
        starts = [e for e in fo.events() if e.type == "engine_started"]
        assert len(starts) == 2
        assert fo.metrics().calls == await _reference(path)
    finally:
        await fo.aclose()


async def test_load_failure_is_raised_and_next_use_retries(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 50)
    store = SQLiteEventStore(str(path))
    fo = MultiModelFailover(
        {"a": FakeModelClient(), "b": FakeModelClient()}, RETRY, event_store=store
    )
    real = store.snapshots.loading
    boom = [True]

    def loading(*a: object, **k: object) -> object:
        if boom:
            boom.clear()
            raise RuntimeError("disk gone")
        return real(*a, **k)

    store.snapshots.loading = loading  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="disk gone"):
            await fo.call("x")
        await fo.call("y")
        # the failed call never started (the load failed first): the log's 50, and "y"
        assert fo.metrics().calls == 50 + 1
    finally:
        await fo.aclose()


# -- archive cutting the log while an engine loads it --------------------------------------


async def test_archive_during_load_starts_over_from_the_cut(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 2000)
    before = await _reference(path)
    fo = _fo(path)
    try:

        def cut() -> None:
            store = SQLiteEventStore(str(path))
            try:
                archive(
                    store,
                    before=datetime.now(UTC) + timedelta(days=1),
                    to=str(tmp_path / "arch.sqlite3"),
                )
            finally:
                store.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(fo.call, "x")
            await anyio.lowlevel.checkpoint()
            await anyio.to_thread.run_sync(cut)
        assert fo.metrics().calls == before + 1
    finally:
        await fo.aclose()
    assert await _reference(path) == before + 1


# -- two engines on one log, loading at once -----------------------------------------------


async def test_two_engines_load_one_log_at_once(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 500)
    one, two = _fo(path), _fo(path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one.call, "1")
            tg.start_soon(two.call, "2")
        await one.follow()
        await two.follow()
        assert one.metrics().calls == two.metrics().calls == 502
    finally:
        await one.aclose()
        await two.aclose()


# -- sync clients stuck for good ------------------------------------------------------------


async def test_more_than_40_stuck_sync_clients_fail_over(
    tmp_path: Path, anyio_backend: str
) -> None:
    release = threading.Event()

    def stuck(prompt: str) -> object:
        release.wait(10)
        return "late"

    clients: dict[str, object] = {f"s{i}": SyncFakeModelClient(stuck) for i in range(45)}
    clients["ok"] = FakeModelClient()
    fo = MultiModelFailover(
        clients,
        {**RETRY, "attempt_timeout": 0.01, "call_budget": 30},  # type: ignore[dict-item]
        event_store=str(tmp_path / "log.sqlite3"),
    )
    try:
        with anyio.fail_after(5):
            answer = await fo.call("x")
            assert answer == "ok"
            # the engine's own thread work (commits, a new load) still runs
            assert fo.metrics().calls == 1
            answer = await fo.call("y")
            assert answer == "ok"
            await fo.aclose()
    finally:
        release.set()
        await fo.aclose()


async def test_probes_that_block_forever(tmp_path: Path, anyio_backend: str) -> None:
    release = threading.Event()

    class StuckProbe(SyncFakeModelClient):
        def health_check(self) -> bool:
            release.wait(10)
            return True

    clients: dict[str, object] = {f"s{i}": StuckProbe() for i in range(42)}
    clients["h"] = FakeModelClient(probe=hang)
    fo = MultiModelFailover(
        clients,
        RETRY,
        health_policy={"probe_timeout": 0.05},
        event_store=str(tmp_path / "log.sqlite3"),
    )
    try:
        with anyio.fail_after(5):
            states = await fo.check_health()
            assert set(states) == set(clients)
            # every client thread may be held by a stuck probe: a sync call waits, times
            # out and fails over; the engine's own work still runs
            late = MultiModelFailover(
                {"sync": SyncFakeModelClient(), "async": FakeModelClient()},
                {**RETRY, "attempt_timeout": 0.05},
                event_store=str(tmp_path / "log2.sqlite3"),
            )
            try:
                assert await late.call("x") == "ok"
            finally:
                await late.aclose()
            await fo.aclose()
    finally:
        release.set()
        await fo.aclose()


# -- the archive's / store's paced fold -----------------------------------------------------


def test_pace_rests_after_each_millisecond_of_work_even_for_slow_rows() -> None:
    """Each row takes 1 ms: the doc promises a rest after each millisecond of work."""
    now = [0.0]
    rests: list[float] = []
    pace = Pace(clock=lambda: now[0], sleep=rests.append)
    for _ in range(10):
        now[0] += 0.001  # a row's fold: a millisecond of Python work
        pace.step()
    assert len(rests) >= 9, f"rested {len(rests)} times over 10 ms of work"


@pytest.mark.parametrize("when", [1, 2, 3, 4])
async def test_archive_inside_the_load_steps(tmp_path: Path, anyio_backend: str, when: int) -> None:
    """The archive runs between the load's own reads (on its worker thread)."""
    path = tmp_path / "log.sqlite3"
    await _seed(path, 1500)
    before = await _reference(path)
    store = SQLiteEventStore(str(path))
    fo = MultiModelFailover(
        {"a": FakeModelClient(), "b": FakeModelClient()}, RETRY, event_store=store
    )
    real = store.snapshots.loading

    def cut() -> None:
        other = SQLiteEventStore(str(path))
        try:
            archive(
                other,
                before=datetime.now(UTC) + timedelta(days=1),
                to=str(tmp_path / "arch.sqlite3"),
            )
        finally:
            other.close()

    def loading(*a: object, **k: object) -> object:
        steps = real(*a, **k)
        count = [0]
        for name in ("begin", "read", "finish"):
            orig = getattr(steps, name)

            def wrapped(*aa: object, _orig: object = orig, **kk: object) -> object:
                count[0] += 1
                if count[0] == when:
                    cut()
                return _orig(*aa, **kk)  # type: ignore[operator]

            setattr(steps, name, wrapped)
        return steps

    store.snapshots.loading = loading  # type: ignore[method-assign]
    try:
        await fo.call("x")
        assert fo.metrics().calls == before + 1
    finally:
        await fo.aclose()
    assert await _reference(path) == before + 1


@pytest.mark.parametrize("when", [1, 2, 3])
async def test_load_failing_midway_leaves_nothing_half_loaded(
    tmp_path: Path, anyio_backend: str, when: int
) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 400)
    store = SQLiteEventStore(str(path))
    fo = MultiModelFailover(
        {"a": FakeModelClient(), "b": FakeModelClient()}, RETRY, event_store=store
    )
    real = store.snapshots.loading
    armed = [True]

    def loading(*a: object, **k: object) -> object:
        steps = real(*a, **k)
        count = [0]
        for name in ("begin", "read", "fold", "finish"):
            orig = getattr(steps, name)

            def wrapped(*aa: object, _orig: object = orig, **kk: object) -> object:
                count[0] += 1
                if armed and count[0] == when:
                    armed.clear()
                    raise RuntimeError("midway")
                return _orig(*aa, **kk)  # type: ignore[operator]

            setattr(steps, name, wrapped)
        return steps

    store.snapshots.loading = loading  # type: ignore[method-assign]
    try:
        fo.model_ids  # noqa: B018
        with pytest.raises(Exception, match="midway"):
            await fo.check_health()
        await fo.call("y")
        assert fo.metrics().calls == 400 + 1
    finally:
        await fo.aclose()


_OTHER_PROCESS = """
import sys, anyio
from devs.risks.multi_model_failover import MultiModelFailover
from tests.core.fakes import FakeModelClient

async def main():
    fo = MultiModelFailover(
        {"a": FakeModelClient(), "b": FakeModelClient()},
        {"jitter": "none", "max_attempts": 1, "base_delay": 0.0},
        event_store=sys.argv[1],
    )
    try:
        for _ in range(20):
            await fo.call("other")
    finally:
        await fo.aclose()

anyio.run(main)
"""


async def test_two_processes_load_one_log_at_once(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 800)
    fo = _fo(path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: anyio.run_process(
                    [sys.executable, "-c", _OTHER_PROCESS, str(path)], cwd=Path.cwd()
                )
            )
            tg.start_soon(fo.call, "mine")
        await fo.follow()
        assert fo.metrics().calls == 800 + 20 + 1
    finally:
        await fo.aclose()
    assert await _reference(path) == 800 + 20 + 1


async def test_many_calls_wait_for_one_load(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "log.sqlite3"
    await _seed(path, 600)
    fo = _fo(path)
    answers: list[object] = []

    async def one(i: int) -> None:
        answers.append(await fo.call(f"c{i}"))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(fo.check_health)
            tg.start_soon(fo.set_maintenance, "b", True)
        assert answers == ["ok"] * 30
        m = fo.metrics()
        assert m.calls == 600 + 30
        assert fo.states["b"].value in {"maintenance", "MAINTENANCE"} or "b" not in fo.rotation
    finally:
        await fo.aclose()


async def test_at_most_40_sync_client_threads_at_once(tmp_path: Path, anyio_backend: str) -> None:
    """'40 at once per event loop': count the sync clients' threads running at once. The
    engine answers however many are stuck."""
    release = threading.Event()
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def stuck(prompt: str) -> object:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            release.wait(10)
        finally:
            with lock:
                running[0] -= 1
        return "late"

    clients: dict[str, object] = {f"s{i}": SyncFakeModelClient(stuck) for i in range(60)}
    clients["ok"] = FakeModelClient()
    fo = MultiModelFailover(
        clients,
        {**RETRY, "attempt_timeout": 0.01},  # type: ignore[dict-item]
        event_store=str(tmp_path / "log.sqlite3"),
    )
    try:
        with anyio.fail_after(5):
            assert await fo.call("x") == "ok"
            await fo.aclose()
        # On trio a timed-out attempt's thread keeps its place; on asyncio it stops counting
        # (the docs say so): only trio caps the threads stuck clients leave behind.
        if anyio_backend == "trio":
            assert peak[0] <= 40, f"{peak[0]} sync client threads at once"
    finally:
        release.set()
        await fo.aclose()


def test_pace_rests_point_two_ms_after_each_ms_of_fast_rows() -> None:
    now = [0.0]
    rests: list[float] = []
    pace = Pace(clock=lambda: now[0], sleep=rests.append)
    for _ in range(100_000):
        now[0] += 0.000_001  # a small event's fold: a microsecond
        pace.step()
    # 100 ms of work: a rest after each millisecond of it
    assert 95 <= len(rests) <= 100
    assert set(rests) == {0.0002}
