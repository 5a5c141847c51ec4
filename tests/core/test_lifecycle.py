"""The engine's lifecycle at its edges: every way out of ``async with``, closing with calls in
flight, a caller cancelled while its answer is committed, an engine nobody closed.

Each test breaks the promise on purpose and checks what the caller got against the log: every
call ends in exactly one terminal event, and it is the outcome its caller saw.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    EngineClosedError,
    EventLogError,
    ModelError,
    MultiModelFailover,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.core.events import Event

from .fakes import FakeModelClient, always, failing

pytestmark = pytest.mark.anyio

GUARD = 10.0


def terminals(events: list[Event]) -> dict[str, list[str]]:
    """Each call id's terminal event types, in log order."""
    found: dict[str, list[str]] = {}
    for event in events:
        if event.type == "call_started":
            found.setdefault(event.call_id, [])  # type: ignore[union-attr]
        elif event.type in ("call_succeeded", "call_failed", "call_cancelled"):
            found.setdefault(event.call_id, []).append(event.type)  # type: ignore[union-attr]
    return found


def read(path: Path) -> list[Event]:
    with SQLiteEventStore(path, create=False) as store:
        return list(store.read())


class Gate:
    """A client whose answer waits until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    async def call(self, prompt: str) -> str:
        self.entered.set()
        await self.opened.wait()
        return "late answer"

    async def health_check(self) -> bool:
        return True


def keeping_what_it_raises(fo: MultiModelFailover, raised: list[BaseException]) -> Any:
    """A task that makes one call and keeps the exception it ends with, if any."""

    async def caller() -> None:
        try:
            await fo.call("hi")
        except Exception as exc:
            raised.append(exc)

    return caller


# -- leaving `async with` ---------------------------------------------------------------------


async def test_an_exception_leaves_the_block_as_itself_and_closes_the_engine(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover([FakeModelClient(failing("server"))], event_store=log)
    with pytest.raises(AllModelsFailedError) as caught:
        async with fo:
            await fo.call("hi")
    assert type(caught.value) is AllModelsFailedError  # not an ExceptionGroup around it
    assert fo.closed
    assert fo.event_store.closed  # type: ignore[attr-defined]
    assert read(log)[-1].type == "engine_stopped"


async def test_an_error_of_the_callers_own_leaves_as_itself(tmp_path: Path) -> None:
    fo = MultiModelFailover([FakeModelClient()], event_store=tmp_path / "e.sqlite3")
    with pytest.raises(KeyError, match="mine"):
        async with fo:
            raise KeyError("mine")
    assert fo.closed


async def test_buffered_events_of_returned_calls_survive_an_exception_out_of_the_block(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover([FakeModelClient()], event_store=log, durability="buffered")
    calls = 3_000

    async def use() -> None:
        async with fo:
            for _ in range(calls):
                await fo.call("hi")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await use()
    counts = Counter(e.type for e in read(log))
    assert counts["call_succeeded"] == calls
    assert counts["engine_stopped"] == 1


async def test_a_cancellation_out_of_the_block_closes_the_engine(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover([FakeModelClient()], event_store=log)
    with anyio.move_on_after(0.05) as scope:
        async with fo:
            await fo.call("hi")
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert fo.closed
    assert read(log)[-1].type == "engine_stopped"


async def test_a_return_out_of_the_block_closes_the_engine(tmp_path: Path) -> None:
    fo = MultiModelFailover([FakeModelClient()], event_store=tmp_path / "e.sqlite3")

    async def use() -> str:
        async with fo:
            return str(await fo.call("hi"))

    assert await use() == "ok"
    assert fo.closed


# -- closing with calls in flight -------------------------------------------------------------


async def test_close_lets_a_call_in_flight_finish_within_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    gate = Gate()
    fo = MultiModelFailover({"slow": gate}, event_store=log)
    got: list[object] = []

    async def caller() -> None:
        got.append(await fo.call("hi"))

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        await gate.entered.wait()
        group.start_soon(fo.aclose)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(EngineClosedError):  # no new call once closing began
            await fo.call("too late")
        gate.opened.set()
    assert got == ["late answer"]
    events = read(log)
    assert [e.type for e in events][-2:] == ["call_succeeded", "engine_stopped"]
    assert all(len(t) == 1 for t in terminals(events).values())


async def test_close_cuts_a_call_short_after_the_grace_with_one_terminal_event(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.sqlite3"
    gate = Gate()
    fo = MultiModelFailover({"hangs": gate}, event_store=log)
    raised: list[BaseException] = []
    caller = keeping_what_it_raises(fo, raised)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(caller)
            await gate.entered.wait()
            await fo.aclose(grace=0.05)
    assert len(raised) == 1
    assert isinstance(raised[0], EngineClosedError)  # never an EventLogError for a call
    assert not isinstance(raised[0], EventLogError)
    events = read(log)
    cancelled = [e for e in events if e.type == "call_cancelled"]
    assert [e.reason for e in cancelled] == ["engine_closed"]  # type: ignore[attr-defined]
    assert all(len(t) == 1 for t in terminals(events).values())
    assert events[-1].type == "engine_stopped"


async def test_close_during_a_backoff_cuts_the_wait(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    primary = FakeModelClient(failing("server"), model_id="primary")
    backing_off = anyio.Event()

    async def sleep(seconds: float) -> None:
        backing_off.set()
        await anyio.sleep(seconds)

    fo = MultiModelFailover(
        [primary],
        {"max_attempts": 3, "base_delay": 30, "jitter": "none"},
        event_store=log,
        sleep=sleep,
    )
    raised: list[BaseException] = []
    caller = keeping_what_it_raises(fo, raised)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(caller)
            await backing_off.wait()
            await fo.aclose(grace=0.01)
    assert [type(e) for e in raised] == [EngineClosedError]
    assert all(len(t) == 1 for t in terminals(read(log)).values())


async def test_a_stream_left_suspended_is_ended_by_close(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"

    class Chunks:
        async def call(self, prompt: str) -> str:
            return "x"

        async def stream(self, prompt: str) -> Any:
            for chunk in ("a", "b", "c"):
                yield chunk

        async def health_check(self) -> bool:
            return True

    fo = MultiModelFailover({"s": Chunks()}, event_store=log)
    stream = fo.stream("hi")
    assert await stream.__anext__() == "a"
    with anyio.fail_after(GUARD):
        await fo.aclose(grace=0.01)
    with pytest.raises(EngineClosedError):
        await stream.__anext__()
    events = read(log)
    assert all(len(t) == 1 for t in terminals(events).values())
    assert [e.type for e in events][-2:] == ["call_cancelled", "engine_stopped"]


# -- a caller cancelled while its answer is committed -----------------------------------------


class SlowCommit(SQLiteEventStore):
    """An SQLite store whose commits the test holds back."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def wait_committed(self, ticket: int) -> None:
        self.held.set()
        await self.release.wait()
        await super().wait_committed(ticket)


async def test_a_cancel_scope_during_the_commit_wait_gets_what_the_log_records(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.sqlite3"
    store = SlowCommit(log)
    fo = MultiModelFailover([FakeModelClient(always("answer"))], event_store=store)
    got: list[object] = []
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                got.append(await fo.call("hi"))

        group.start_soon(caller)
        await store.held.wait()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        store.release.set()
    await fo.aclose()
    (call,) = terminals(read(log)).values()
    assert call[-1] == ("call_succeeded" if got == ["answer"] else "call_cancelled")
    assert fo.metrics() == replay(log).metrics


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_cancel_during_the_commit_wait_gets_what_the_log_records(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.sqlite3"
    store = SlowCommit(log)
    fo = MultiModelFailover([FakeModelClient(always("answer"))], event_store=store)
    task = asyncio.ensure_future(fo.call("hi"))
    await store.held.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    store.release.set()
    try:
        got: object = await task
    except asyncio.CancelledError:
        got = "cancelled"
    await fo.aclose()
    (call,) = terminals(read(log)).values()
    assert call[-1] == ("call_succeeded" if got == "answer" else "call_cancelled")
    assert replay(log).metrics.calls_cancelled == (0 if got == "answer" else 1)


class Instant:
    """An async client whose answer never yields to the event loop (no await inside)."""

    async def call(self, prompt: str) -> str:
        return "instant"

    async def health_check(self) -> bool:
        return True


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_a_cancel_scope_stops_a_loop_of_calls_to_a_client_that_never_yields(
    tmp_path: Path, durability: str
) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover({"i": Instant()}, event_store=log, durability=durability)
    with anyio.fail_after(GUARD), anyio.move_on_after(0.2) as scope:
        while True:
            await fo.call("hi")
    assert scope.cancelled_caught
    await fo.aclose()
    events = read(log)
    assert replay(log).metrics == fo.metrics()
    outcomes = terminals(events)
    assert all(t[-1] in ("call_succeeded", "call_cancelled") for t in outcomes.values())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_cancel_is_never_swallowed_by_a_loop_of_calls(tmp_path: Path) -> None:
    fo = MultiModelFailover(
        {"i": Instant()}, event_store=tmp_path / "e.sqlite3", durability="power"
    )

    async def loop() -> None:
        while True:
            await fo.call("hi")

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with anyio.fail_after(GUARD), pytest.raises(asyncio.CancelledError):
        await task
    await fo.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_timeout_around_a_loop_of_calls_fires(tmp_path: Path) -> None:
    fo = MultiModelFailover({"i": Instant()}, event_store=tmp_path / "e.sqlite3")

    async def loop() -> None:
        async with asyncio.timeout(0.1):
            while True:
                await fo.call("hi")

    with anyio.fail_after(GUARD), pytest.raises(TimeoutError):
        await loop()
    await fo.aclose()


# -- an engine nobody closed ------------------------------------------------------------------


def test_an_engine_never_closed_warns_and_lets_its_log_go(tmp_path: Path) -> None:
    def leak() -> Callable[[], bool]:
        fo = MultiModelFailover([FakeModelClient()], event_store=tmp_path / "e.sqlite3")
        store = fo.event_store
        return lambda: bool(store.closed)  # type: ignore[attr-defined]

    with pytest.warns(ResourceWarning, match="unclosed MultiModelFailover"):
        store_closed = leak()  # the engine goes with the function's frame
    assert store_closed()


def test_an_engine_whose_log_was_closed_by_hand_does_not_warn(tmp_path: Path) -> None:
    fo = MultiModelFailover([FakeModelClient()], event_store=tmp_path / "e.sqlite3")
    fo.event_store.close()
    del fo
    gc.collect()  # filterwarnings=error: a warning here fails the test


async def test_a_closed_engine_refuses_calls_streams_and_maintenance(tmp_path: Path) -> None:
    fo = MultiModelFailover([FakeModelClient(model_id="m")])
    await fo.aclose()
    with pytest.raises(EngineClosedError):
        await fo.call("hi")
    with pytest.raises(EngineClosedError):
        await fo.stream("hi").__anext__()
    with pytest.raises(EngineClosedError):
        await fo.set_maintenance("m", True)
    assert isinstance(EngineClosedError("x"), RuntimeError)
    assert not issubclass(EngineClosedError, ModelError)
    await fo.aclose()  # twice is fine


# -- found by a hostile test: the edges of closing --------------------------------------------


def test_a_process_that_never_closes_its_engine_still_exits(tmp_path: Path) -> None:
    script = tmp_path / "leak.py"
    script.write_text(
        "import anyio\n"
        "from devs.risks.multi_model_failover import MultiModelFailover\n"
        "class C:\n"
        "    async def call(self, p): return 'ok'\n"
        "    async def health_check(self): return True\n"
        f"fo = MultiModelFailover({{'c': C()}}, event_store={str(tmp_path / 'e.sqlite3')!r},\n"
        "                        durability='buffered')\n"
        "async def main():\n"
        "    for _ in range(3000):\n"
        "        await fo.call('hi')\n"
        "anyio.run(main)\n"
        "print('done')\n"
    )
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "done")


async def test_a_stream_held_past_its_unclosed_engine_ends_quietly(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"

    class Chunks:
        async def call(self, prompt: str) -> str:
            return "x"

        async def stream(self, prompt: str) -> Any:
            for chunk in ("a", "b"):
                yield chunk

        async def health_check(self) -> bool:
            return True

    async def start() -> Any:
        fo = MultiModelFailover({"s": Chunks()}, event_store=log)
        stream = fo.stream("hi")
        assert await stream.__anext__() == "a"
        return stream  # the engine goes with this frame; its stream stays with the caller

    with pytest.warns(ResourceWarning, match="unclosed MultiModelFailover"):
        stream = await start()
    with pytest.raises(EngineClosedError):
        await stream.__anext__()
    await stream.aclose()
    (call,) = terminals(read(log)).values()
    assert call == ["call_cancelled"]


async def test_a_second_close_returns_only_once_the_first_has_finished(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    gate = Gate()
    fo = MultiModelFailover({"slow": gate}, event_store=log)
    finished: list[str] = []

    async def close(name: str) -> None:
        await fo.aclose(grace=0.05)
        finished.append(name)
        assert fo.event_store.closed  # type: ignore[attr-defined]

    async def caller() -> None:
        with pytest.raises(EngineClosedError):
            await fo.call("hi")

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(caller)
            await gate.entered.wait()
            group.start_soon(close, "first")
            group.start_soon(close, "second")
    assert sorted(finished) == ["first", "second"]
    assert read(log)[-1].type == "engine_stopped"


async def test_a_probe_round_under_way_is_cut_by_close_and_later_rounds_refused(
    tmp_path: Path,
) -> None:
    entered = anyio.Event()

    async def hang() -> bool:
        entered.set()
        await anyio.sleep_forever()
        return True

    client = FakeModelClient(model_id="m", probe=hang)
    fo = MultiModelFailover([client], health_policy={"probe_timeout": 30})
    raised: list[BaseException] = []

    async def round_() -> None:
        try:
            await fo.check_health()
        except EngineClosedError as exc:
            raised.append(exc)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(round_)
            await entered.wait()
            await fo.aclose()
    assert len(raised) == 1  # not a stale "healthy" for a probe that never answered
    with pytest.raises(EngineClosedError):
        await fo.check_health()
    assert client.probes == 1
