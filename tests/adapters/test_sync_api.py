"""``SyncMultiModelFailover``: the engine for threads, on one background event loop.

Every test runs the background loop on asyncio and on trio. The clients are real async (or
sync) objects on that loop; the threads are real threads. Each test closes what it opens, and
checks the log after close: its replay equals the live metrics.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
from tests.core.fakes import FakeModelClient, SyncFakeModelClient, failing

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ConfigError,
    DeadlineExceededError,
    EngineClosedError,
    ErrorKind,
    HealthState,
    ModelError,
    ModelResponse,
    SyncMultiModelFailover,
    Usage,
    replay,
)

ROOT_KEY = "multi_model_failover"
NO_WAIT = {"max_attempts": 1, "jitter": "none"}


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The background loop's backend."""
    return str(request.param)


@pytest.fixture
def opened() -> Iterator[list[SyncMultiModelFailover]]:
    """Engines a test opened; each is closed after it, whatever the test did."""
    engines: list[SyncMultiModelFailover] = []
    yield engines
    for fo in engines:
        fo.close(grace=0)


def types_of(fo: SyncMultiModelFailover) -> list[str]:
    return [event.type for event in fo.event_store.read()]


def assert_replay_matches(fo: SyncMultiModelFailover) -> None:
    assert fo.closed
    assert replay(fo.event_store).metrics == fo.metrics()


class Echo:
    """An async client that answers at once, recording the params of each call."""

    def __init__(self, model_id: str = "echo") -> None:
        self.model_id = model_id
        self.params: list[dict[str, Any] | None] = []

    async def call(self, prompt: str, params: Any = None) -> ModelResponse:
        self.params.append(None if params is None else dict(params))
        return ModelResponse(
            text=f"{self.model_id}: {prompt}",
            model=self.model_id,
            usage=Usage(input_tokens=10, output_tokens=5),
        )

    async def health_check(self) -> bool:
        return True


class Gate:
    """An async client whose calls answer only once ``expected`` calls are in flight at once:
    calls that did not run concurrently would never get there (and time out)."""

    def __init__(self, expected: int) -> None:
        self.model_id = "gate"
        self.expected = expected
        self.in_flight = 0
        self.peak = 0
        self._open: anyio.Event | None = None

    async def call(self, prompt: str) -> str:
        if self._open is None:
            self._open = anyio.Event()  # made on the loop that waits on it
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.expected:
            self._open.set()
        try:
            await self._open.wait()
        finally:
            self.in_flight -= 1
        return f"gate: {prompt}"

    async def health_check(self) -> bool:
        return True


class Hang:
    """An async client that never answers; ``entered`` counts the calls waiting in it."""

    def __init__(self, model_id: str = "hang") -> None:
        self.model_id = model_id
        self.lock = threading.Lock()
        self.entered = 0

    async def call(self, prompt: str) -> str:
        with self.lock:
            self.entered += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def health_check(self) -> bool:
        return True

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.entered < count:
            assert time.monotonic() < deadline, f"{self.entered} of {count} calls arrived"
            time.sleep(0.005)


class Slow:
    """An async client that answers after ``seconds`` of real time."""

    def __init__(self, seconds: float) -> None:
        self.model_id = "slow"
        self.seconds = seconds
        self.entered = threading.Semaphore(0)

    async def call(self, prompt: str) -> str:
        self.entered.release()
        await anyio.sleep(self.seconds)
        return f"slow: {prompt}"

    async def health_check(self) -> bool:
        return True


class Streamer:
    """A client that streams ``chunks`` (then stops, or waits forever with ``endless``) and
    records whether its stream was closed, i.e. its connection released."""

    def __init__(self, chunks: list[str], *, endless: bool = False) -> None:
        self.model_id = "streamer"
        self.chunks = chunks
        self.endless = endless
        self.released = threading.Event()

    async def call(self, prompt: str) -> str:
        return "".join(self.chunks)

    async def health_check(self) -> bool:
        return True

    def stream(self, prompt: str) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.endless:
                await anyio.sleep_forever()
        finally:
            self.released.set()


class Held:
    """An async client whose calls wait until the test (another thread) releases them."""

    def __init__(self) -> None:
        self.model_id = "held"
        self.entered = threading.Event()
        self.release = threading.Event()

    async def call(self, prompt: str) -> str:
        self.entered.set()
        # Set by the test's thread, not on the loop: waited for in a worker thread.
        await anyio.to_thread.run_sync(self.release.wait, abandon_on_cancel=True)
        return f"held: {prompt}"

    async def health_check(self) -> bool:
        return True


class Closable(Streamer):
    """A streaming client with an async ``aclose()``; records each close and whether its
    stream had been released by then."""

    def __init__(self, model_id: str, *, fails: bool = False) -> None:
        super().__init__(["a", "b"], endless=True)
        self.model_id = model_id
        self.fails = fails
        self.closes: list[bool] = []  # per close: was the stream released already?
        self.close_threads: list[int] = []

    async def aclose(self) -> None:
        self.closes.append(self.released.is_set())
        self.close_threads.append(threading.get_ident())
        if self.fails:
            raise RuntimeError(f"{self.model_id} failed to close")


class SyncClosable(Echo):
    """A client whose only close is synchronous: its caller closes it whenever it likes."""

    def __init__(self) -> None:
        super().__init__("sync-closable")
        self.closed = False

    def close(self) -> None:
        self.closed = True


def threads_left(before: set[int | None]) -> list[str]:
    """Threads started since ``before`` still alive, but trio's cache of idle workers."""
    return [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and not t.name.startswith("Trio thread")
    ]


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def interrupt_main_thread_when(condition: Callable[[], bool]) -> threading.Thread:
    """SIGINT to the main thread (a Ctrl-C) once ``condition()`` holds, and a moment more for
    the main thread to get into the wait that follows it."""
    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident or 0

    def interrupt() -> None:
        assert wait_until(condition)
        time.sleep(0.2)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """``work(i)`` in ``count`` threads at once; what each returned or raised, by ``i``."""
    results: list[object] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a call never returned"
    return results


# -- many threads at once ---------------------------------------------------------------------


def test_calls_from_many_threads_run_at_once_on_the_one_loop(backend: str) -> None:
    gate = Gate(expected=8)
    with SyncMultiModelFailover([gate], NO_WAIT, backend=backend) as fo:
        answers = in_threads(8, lambda i: fo.call(f"q{i}", timeout=5))
        assert answers == [f"gate: q{i}" for i in range(8)]
        assert gate.peak == 8
        metrics = fo.metrics()
        assert (metrics.calls, metrics.calls_succeeded) == (8, 8)
    assert_replay_matches(fo)


def test_many_threads_with_params_and_outcomes_do_not_mix(backend: str) -> None:
    echo = Echo()
    with SyncMultiModelFailover([echo], NO_WAIT, prices={"echo": {"input": 3.0, "output": 15.0}},
                                backend=backend) as fo:  # fmt: skip
        results = in_threads(
            16,
            lambda i: fo.call_with_outcome(f"q{i}", params={"seed": i}),
        )
        for i, outcome in enumerate(results):
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.response.text == f"echo: q{i}"  # type: ignore[attr-defined]
            assert outcome.model_id == "echo"  # type: ignore[attr-defined]
        assert sorted(p["seed"] for p in echo.params if p) == list(range(16))
        metrics = fo.metrics()
        assert (metrics.input_tokens, metrics.output_tokens) == (160, 80)
        assert metrics.cost == pytest.approx(16 * (10 * 3.0 + 5 * 15.0) / 1e6)
    assert_replay_matches(fo)


def test_a_sync_client_runs_beside_threads_calling_in(backend: str) -> None:
    client = SyncFakeModelClient(model_id="blocking")
    with SyncMultiModelFailover([client], NO_WAIT, backend=backend) as fo:
        assert in_threads(4, lambda i: fo.call(f"q{i}")) == ["ok"] * 4
    assert sorted(client.calls) == ["q0", "q1", "q2", "q3"]
    assert threading.get_ident() not in client.call_threads
    assert_replay_matches(fo)


# -- errors keep their type -------------------------------------------------------------------


def test_errors_reach_the_calling_thread_with_their_type(backend: str) -> None:
    clients = {"a": FakeModelClient(failing("server")), "b": FakeModelClient(failing("server"))}
    with SyncMultiModelFailover(clients, NO_WAIT, backend=backend) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            fo.call("hi")
        assert [(r.model_id, r.error_kind) for r in caught.value.attempts] == [
            ("a", ErrorKind.SERVER),
            ("b", ErrorKind.SERVER),
        ]
        with pytest.raises(AllModelsFailedError):
            fo.call_with_outcome("hi")
    assert_replay_matches(fo)


def test_a_bad_request_fails_fast_as_the_clients_model_error(backend: str) -> None:
    clients = {"strict": FakeModelClient(failing("bad_request")), "spare": Echo("spare")}
    with SyncMultiModelFailover(clients, NO_WAIT, backend=backend) as fo:
        with pytest.raises(ModelError) as caught:
            fo.call("hi")
        assert caught.value.kind is ErrorKind.BAD_REQUEST
        assert fo.metrics().by_model.get("spare") is None  # never tried
    assert_replay_matches(fo)


def test_a_timeout_still_applies_and_raises_deadline_exceeded(backend: str) -> None:
    with SyncMultiModelFailover([Hang()], NO_WAIT, backend=backend) as fo:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            fo.call("hi", timeout=0.2)
        assert time.monotonic() - started < 3
    assert "call_failed" in types_of(fo)
    assert_replay_matches(fo)


@pytest.mark.parametrize(("params", "named"), [([("temperature", 0)], "list"), ({1: "x"}, "int")])
def test_bad_params_are_a_type_error_in_the_calling_thread(
    backend: str, opened: list[SyncMultiModelFailover], params: Any, named: str
) -> None:
    fo = SyncMultiModelFailover([Echo()], NO_WAIT, backend=backend)
    opened.append(fo)
    for attempt in (
        lambda: fo.call("hi", params=params),
        lambda: fo.call_with_outcome("hi", params=params),
        lambda: fo.stream("hi", params=params),
    ):
        with pytest.raises(TypeError, match=named):
            attempt()
    fo.close()
    assert "call_started" not in types_of(fo)


# -- closing ----------------------------------------------------------------------------------


def test_close_with_calls_in_flight_ends_them_with_a_clear_error(backend: str) -> None:
    hang = Hang()
    fo = SyncMultiModelFailover([hang], NO_WAIT, backend=backend)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(_outcome(lambda: fo.call("hi"))))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    hang.wait_for(4)
    started = time.monotonic()
    fo.close(grace=0.1)
    assert time.monotonic() - started < 3
    for thread in threads:
        thread.join(timeout=5)
    assert len(results) == 4
    assert all(isinstance(r, EngineClosedError) for r in results), results
    cancelled = [e for e in fo.event_store.read() if e.type == "call_cancelled"]
    assert [e.reason for e in cancelled] == ["engine_closed"] * 4  # type: ignore[attr-defined]
    assert types_of(fo)[-1] == "engine_stopped"
    assert_replay_matches(fo)


def test_calls_in_flight_finish_within_the_grace_period(backend: str) -> None:
    slow = Slow(0.2)
    fo = SyncMultiModelFailover([slow], NO_WAIT, backend=backend)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(_outcome(lambda: fo.call("hi"))))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for _ in range(3):
        assert slow.entered.acquire(timeout=5)
    fo.close(grace=5)
    for thread in threads:
        thread.join(timeout=5)
    assert results == ["slow: hi"] * 3
    assert fo.metrics().calls_succeeded == 3
    assert_replay_matches(fo)


def test_after_close_every_call_raises_and_the_live_view_still_answers(backend: str) -> None:
    fo = SyncMultiModelFailover({"a": Echo("a")}, NO_WAIT, backend=backend)
    assert fo.call("hi").text == "a: hi"
    fo.close()
    fo.close()  # idempotent
    for attempt in (
        lambda: fo.call("hi"),
        lambda: fo.call_with_outcome("hi"),
        lambda: fo.stream("hi"),
        fo.check_health,
        lambda: fo.set_maintenance("a", True),
        fo.__enter__,
    ):
        with pytest.raises(EngineClosedError, match="closed"):
            attempt()
    assert fo.states == {"a": HealthState.HEALTHY}
    assert fo.rotation == ["a"]
    assert fo.metrics().calls == 1
    assert_replay_matches(fo)


def test_two_threads_closing_at_once_both_return_once_it_is_closed(backend: str) -> None:
    fo = SyncMultiModelFailover([Echo()], NO_WAIT, backend=backend)
    assert in_threads(3, lambda i: fo.close()) == [None] * 3
    assert types_of(fo).count("engine_stopped") == 1
    assert_replay_matches(fo)


def test_an_interrupted_caller_cancels_its_call(backend: str) -> None:
    hang = Hang()
    fo = SyncMultiModelFailover([hang], NO_WAIT, backend=backend)
    try:

        def interrupt() -> None:
            hang.wait_for(1)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        assert threading.current_thread() is threading.main_thread()
        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            fo.call("hi", timeout=20)
        interrupter.join()
        assert time.monotonic() - started < 5  # cancelled, not left to its 20 s timeout
        deadline = time.monotonic() + 5
        while fo.metrics().calls_cancelled < 1:  # recorded on the loop, just after
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        fo.close(grace=0)
    assert "call_cancelled" in types_of(fo)
    assert_replay_matches(fo)


def test_ctrl_c_during_close_cuts_the_grace_short(backend: str) -> None:
    """Ctrl-C while close() waits out a long grace: the call in flight ends at once (recorded),
    the log is flushed and closed, the loop's thread stops, then the interrupt goes on."""
    before = {t.ident for t in threading.enumerate()}
    hang = Hang()
    fo = SyncMultiModelFailover([hang], NO_WAIT, backend=backend)
    results: list[object] = []
    caller = threading.Thread(target=lambda: results.append(_outcome(lambda: fo.call("hi"))))
    caller.start()
    hang.wait_for(1)
    interrupter = interrupt_main_thread_when(lambda: fo.closed)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fo.close(grace=10)
    took = time.monotonic() - started
    interrupter.join()
    caller.join(timeout=5)
    assert took < 5, f"close() took {took:.1f}s after Ctrl-C"
    assert [type(r) for r in results] == [EngineClosedError]
    cancelled = [e for e in fo.event_store.read() if e.type == "call_cancelled"]
    assert [e.reason for e in cancelled] == ["engine_closed"]  # type: ignore[attr-defined]
    assert types_of(fo)[-1] == "engine_stopped"
    assert fo.event_store.closed  # type: ignore[attr-defined]
    assert wait_until(lambda: not threads_left(before)), threads_left(before)
    fo.close()  # closed: returns at once
    with pytest.raises(EngineClosedError):
        fo.call("after")
    assert_replay_matches(fo)


def test_the_live_view_answers_at_once_while_closing(backend: str) -> None:
    held = Held()
    fo = SyncMultiModelFailover([held], NO_WAIT, backend=backend)
    caller = threading.Thread(target=_outcome, args=(lambda: fo.call("hi"),))
    caller.start()
    assert held.entered.wait(5)
    closer = threading.Thread(target=fo.close, kwargs={"grace": 10})
    closer.start()
    try:
        assert wait_until(lambda: fo.closed)
        started = time.monotonic()
        snapshot = fo.snapshot()
        assert (fo.states, fo.rotation) == ({"held": HealthState.HEALTHY}, ["held"])
        metrics = fo.metrics()
        took = time.monotonic() - started
    finally:
        held.release.set()  # the call in flight finishes: the close ends within its grace
        closer.join(timeout=5)
        caller.join(timeout=5)
    assert took < 1, f"reads took {took:.1f}s while closing"
    assert snapshot.metrics.calls == metrics.calls == 1
    assert fo.metrics().calls_succeeded == 1
    assert_replay_matches(fo)


# -- the clients given ------------------------------------------------------------------------


def test_close_closes_the_given_clients_on_the_loop_once_their_streams_are_released(
    backend: str,
) -> None:
    """An async client's connections belong to the loop close() stops: close() closes every
    given client that has ``aclose()``, once, after the streams still open are released; a
    client with only a synchronous ``close()`` is its caller's to close."""
    first, second, plain = Closable("first"), Closable("second"), SyncClosable()
    fo = SyncMultiModelFailover([first, second, plain], NO_WAIT, backend=backend)
    stream = fo.stream("hi")
    assert next(stream) == "a"  # left open: close() ends it
    fo.close(grace=0)
    assert first.closes == [True]  # after its stream was released
    assert second.closes == [False]  # never streamed, closed all the same
    assert threading.get_ident() not in first.close_threads + second.close_threads  # the loop's
    assert not plain.closed
    assert_replay_matches(fo)


def test_close_clients_false_leaves_the_given_clients_open(backend: str) -> None:
    client = Closable("mine")
    with SyncMultiModelFailover([client], NO_WAIT, backend=backend, close_clients=False) as fo:
        assert fo.call("hi") == "ab"
    assert client.closes == []
    assert_replay_matches(fo)


def test_a_client_that_fails_to_close_keeps_neither_the_others_nor_the_thread(
    backend: str,
) -> None:
    before = {t.ident for t in threading.enumerate()}
    broken, other = Closable("broken", fails=True), Closable("other")
    fo = SyncMultiModelFailover({"broken": broken, "other": other}, NO_WAIT, backend=backend)
    with pytest.raises(RuntimeError, match="broken failed to close"):
        fo.close()
    assert (len(broken.closes), len(other.closes)) == (1, 1)
    assert fo.event_store.closed  # type: ignore[attr-defined]
    assert wait_until(lambda: not threads_left(before)), threads_left(before)
    fo.close()  # closed: does not raise again
    assert_replay_matches(fo)


def test_an_engine_dropped_unclosed_warns_and_is_closed_in_the_background(backend: str) -> None:
    held = [SyncMultiModelFailover([Echo()], NO_WAIT, backend=backend)]
    store = held[0].event_store
    with pytest.warns(ResourceWarning, match="unclosed SyncMultiModelFailover"):
        held.clear()  # the last reference: nothing else (not its loop) keeps it alive
    deadline = time.monotonic() + 5
    while not store.closed:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the dropped engine was never closed"
        time.sleep(0.01)


# -- streams ------------------------------------------------------------------------------------


def test_a_stream_is_a_plain_iterator_with_an_outcome(backend: str) -> None:
    streamer = Streamer(["Hel", "lo"])
    with SyncMultiModelFailover([streamer], NO_WAIT, backend=backend) as fo:
        stream = fo.stream("hi")
        assert stream.outcome is None
        assert list(stream) == ["Hel", "lo"]
        assert stream.outcome is not None
        assert stream.outcome.model_id == "streamer"
        assert list(stream) == []  # ended: stays ended
    assert streamer.released.is_set()
    assert_replay_matches(fo)


def test_a_stream_read_in_part_then_closed_releases_the_model(backend: str) -> None:
    streamer = Streamer(["a", "b", "c"], endless=True)
    with SyncMultiModelFailover([streamer], NO_WAIT, backend=backend) as fo:
        with fo.stream("hi") as stream:
            assert next(stream) == "a"
            assert next(stream) == "b"
        assert streamer.released.wait(5)
        assert stream.outcome is None
        assert next(stream, None) is None  # closed: ends
        assert fo.metrics().calls_cancelled == 1
        stream.close()  # idempotent
        assert fo.call("again") == "abc"  # the engine is free for the next call
    assert_replay_matches(fo)


def test_a_stream_nobody_reads_on_is_ended_by_close(backend: str) -> None:
    streamer = Streamer(["a", "b", "c"])
    fo = SyncMultiModelFailover([streamer], NO_WAIT, backend=backend)
    stream = fo.stream("hi")
    assert next(stream) == "a"
    started = time.monotonic()
    fo.close(grace=0.1)
    assert time.monotonic() - started < 3
    assert streamer.released.wait(5)
    with pytest.raises(EngineClosedError):
        next(stream)
    assert_replay_matches(fo)


def test_a_stream_reader_interrupted_by_ctrl_c_leaves_the_stream(backend: str) -> None:
    """Ctrl-C in next(): the stream is left as close() would leave it, whether or not the
    reader calls close() afterwards: the model is released and call_cancelled recorded."""
    streamer = Streamer(["a"], endless=True)
    fo = SyncMultiModelFailover([streamer], NO_WAIT, backend=backend)
    try:
        stream = fo.stream("hi", timeout=30)
        assert next(stream) == "a"
        waiting = threading.Event()
        interrupter = interrupt_main_thread_when(waiting.is_set)
        waiting.set()
        with pytest.raises(KeyboardInterrupt):
            next(stream)
        interrupter.join()
        assert streamer.released.wait(5), "the model's stream is still open"
        assert wait_until(lambda: fo.metrics().calls_cancelled == 1)
        assert next(stream, None) is None  # left: ended
        stream.close()  # idempotent
        assert fo.call("again") == "a"
    finally:
        fo.close(grace=0)
    assert_replay_matches(fo)


def test_a_stream_that_fails_raises_the_engines_error(backend: str) -> None:
    clients = {"a": FakeModelClient(failing("server")), "b": FakeModelClient(failing("auth"))}
    with SyncMultiModelFailover(clients, NO_WAIT, backend=backend) as fo:
        stream = fo.stream("hi")
        with pytest.raises(AllModelsFailedError) as caught:
            next(stream)
        assert [r.error_kind for r in caught.value.attempts] == [ErrorKind.SERVER, ErrorKind.AUTH]
        assert list(stream) == []
    assert_replay_matches(fo)


def test_a_stream_never_read_records_nothing(backend: str) -> None:
    with SyncMultiModelFailover([Streamer(["a"])], NO_WAIT, backend=backend) as fo:
        fo.stream("hi").close()
    assert "call_started" not in types_of(fo)
    assert_replay_matches(fo)


# -- operators and configuration ---------------------------------------------------------------


def test_maintenance_health_and_rotation_from_a_thread(backend: str) -> None:
    with SyncMultiModelFailover({"a": Echo("a"), "b": Echo("b")}, NO_WAIT, backend=backend) as fo:
        fo.set_maintenance("a", True, reason="provider incident")
        assert fo.rotation == ["b"]
        assert fo.check_health() == {"a": HealthState.MAINTENANCE, "b": HealthState.HEALTHY}
        assert fo.call("hi").text == "b: hi"
        fo.set_maintenance("a", False)
        assert fo.states == {"a": HealthState.HEALTHY, "b": HealthState.HEALTHY}
        with pytest.raises(ValueError, match="nope"):
            fo.set_maintenance("nope", True)
    assert_replay_matches(fo)


def answer(prompt: str) -> str:
    """The target of a ``callable`` client in the configuration below."""
    return f"configured: {prompt}"


def test_from_config_takes_a_mapping_and_runs_on_its_own_thread(backend: str) -> None:
    document = {
        ROOT_KEY: {
            "clients": [{"id": "local", "kind": "callable", "target": f"{__name__}:answer"}],
            "health_check_interval": 60,
        }
    }
    fo = SyncMultiModelFailover.from_config(document, env={}, backend=backend)
    with fo:
        assert fo.model_ids == ("local",)
        assert fo.call("hi") == "configured: hi"
    assert_replay_matches(fo)


def _outcome(work: Callable[[], object]) -> object:
    try:
        return work()
    except BaseException as exc:
        return exc


def test_a_bad_configuration_raises_and_leaves_no_thread_behind(backend: str) -> None:
    before = threading.active_count()
    with pytest.raises(ConfigError, match="the given mapping"):
        SyncMultiModelFailover.from_config({ROOT_KEY: {"clients": []}}, env={}, backend=backend)
    with pytest.raises(ValueError, match="nope"):
        SyncMultiModelFailover([Echo()], prices={"nope": {"input": 1, "output": 1}})
    assert threading.active_count() == before
