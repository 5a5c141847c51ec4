"""``SyncMultiModelFailover``: the failover engine for code that is not async.

One background thread runs an event loop (anyio's blocking portal) with a ``MultiModelFailover``
open in it (its ``async with``, so the health-check loop runs while the sync object is open).
Each method hands its work to that loop and waits for the answer: any number of threads may
call at once, and their calls run concurrently on the loop, as async callers' would.

Closing (``close()`` or leaving ``with``) refuses new calls at once, gives calls in flight in
other threads ``grace`` seconds to finish, then ends them with ``EngineClosedError`` (each with
its terminal event in the log), flushes and closes the log and stops the thread. A
``KeyboardInterrupt`` while ``close()`` waits cuts the grace short: the calls in flight end at
once, the log is still flushed and the thread stopped, then the interrupt goes on. While
closing and after it, ``metrics()``, ``snapshot()``, ``states`` and ``rotation`` answer at once
(on the loop while it runs, from the closed engine after); every call raises
``EngineClosedError``.

Clients. An async client's connections belong to the event loop that used them, and that loop
is this object's: once it has stopped, nobody can close them (on asyncio, ``aclose()`` on
another loop fails with "Event loop is closed"). So ``close()`` also closes, on the loop and
after every stream has been released, each client given to the constructor that has an
``aclose()``, as ``from_config`` clients are closed by both facades. This differs from the
async ``MultiModelFailover``, whose caller owns the loop and closes the clients it gave when it
likes. ``close_clients=False`` leaves given clients open (for a client shared with something
else that closes it, or one without loop-bound resources); a client with only a synchronous
``close()`` is never touched: close it yourself whenever you like. A constructor that raises
closes nothing of yours.

A caller interrupted while it waits (``KeyboardInterrupt``, ``SystemExit`` from a signal
handler) cancels its call: the call records ``call_cancelled`` and nothing of it runs on. A
stream's reader interrupted in ``next()`` leaves the stream as ``close()`` would (its chunk in
transit may be lost, so it does not read on): the model's connection is released and
``call_cancelled`` recorded. A call never outlives its ``timeout`` (or the policy's
``call_budget``) in any case.

``stream()`` returns a plain iterator of text. One task on the loop reads the engine's stream
and hands each chunk over when the iterator asks for it (at most one chunk read ahead), so a
slow reader is not taken for a stalled model. Close it early (``close()``, ``with``) to
release the connection at once; it records ``call_cancelled`` like an async stream left early.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import os
import random
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, Unpack, cast, overload

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..core.calls import CallOutcome, EngineClosedError, check_params
from ..core.engine import DEFAULT_GRACE
from ..core.health import HealthState
from ..core.livelog import WallClock
from ..core.policies import HealthPolicy, RetryPolicy
from ..core.projections import Metrics, Snapshot
from ..core.protocols import Clock, Durability, EventStore, Params, Prompt, Sleep
from ..core.streaming import FailoverStream, StreamOutcome, StreamSwitch
from .config import ConfigSource, RetentionConfig
from .facade import FailoverOptions, MultiModelFailover, Prices
from .retention import Retention

Backend = Literal["asyncio", "trio"]
T = TypeVar("T")
_Chunk_co = TypeVar("_Chunk_co", covariant=True)
_CLOSED = "this SyncMultiModelFailover is closed"


class SyncMultiModelFailover:
    """``MultiModelFailover`` for threads: the same constructor, ``from_config`` and methods,
    blocking. Safe to call from many threads at once; see the module docstring.

    ``backend``: the event loop the background thread runs (``"asyncio"`` or ``"trio"``).
    ``close_clients``: whether ``close()`` closes the given clients that have an ``aclose()``
    (default: yes, their connections die with this object's loop; see the module docstring).
    Close it (``with``, or ``close()``); an instance dropped unclosed warns
    (``ResourceWarning``) and is closed in the background.
    """

    _portal: BlockingPortal
    _facade: MultiModelFailover
    _pump_group: anyio.abc.TaskGroup

    def __init__(
        self,
        clients: Sequence[Any] | Mapping[str, Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        health_check_interval: float = 30,
        *,
        health_policy: HealthPolicy | Mapping[str, Any] | None = None,
        event_store: EventStore | str | os.PathLike[str] | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall_clock: WallClock | None = None,
        durability: Durability = "process",
        fingerprint_prompts: bool = False,
        replica: str | None = None,
        follow_interval: float | None = None,
        call_ids: Callable[[], str] | None = None,
        retention: Retention | RetentionConfig | Mapping[str, Any] | None = None,
        prices: Prices | None = None,
        backend: Backend = "asyncio",
        close_clients: bool = True,
    ) -> None:
        build = partial(
            MultiModelFailover,
            clients,
            retry_policy,
            health_check_interval,
            health_policy=health_policy,
            event_store=event_store,
            sleep=sleep,
            clock=clock,
            rng=rng,
            wall_clock=wall_clock,
            durability=durability,
            fingerprint_prompts=fingerprint_prompts,
            replica=replica,
            follow_interval=follow_interval,
            call_ids=call_ids,
            retention=retention,
            prices=prices,
        )
        self._open(build, backend, _closable(clients) if close_clients else [])

    @classmethod
    def from_config(
        cls,
        source: ConfigSource | None = None,
        *,
        env: Mapping[str, str] | None = None,
        backend: Backend = "asyncio",
        **overrides: Unpack[FailoverOptions],
    ) -> Self:
        """As ``MultiModelFailover.from_config`` (the variable, else ``source``: a path or a
        configuration document as a mapping, else config/risks.yaml), running on its own
        event loop thread."""
        sync = cls.__new__(cls)
        # The clients it builds are the facade's own: it closes them itself.
        build = partial(MultiModelFailover.from_config, source, env=env, **overrides)
        sync._open(build, backend, [])
        return sync

    def _open(
        self, build: Callable[[], MultiModelFailover], backend: Backend, clients: list[Any]
    ) -> None:
        self._clients = clients  # given clients that close() closes on the loop
        self._lock = threading.Lock()
        self._closing = False
        self._closed = threading.Event()  # set once a close has finished
        self._pumps: set[_Pump] = set()  # streams being read; touched on the loop only
        portal_cm = start_blocking_portal(backend)
        portal = portal_cm.__enter__()
        try:
            self._loop_thread = portal.call(threading.get_ident)
            self._host_done = portal.call(anyio.Event)
            # Not a method: the loop must not keep this object alive (dropped, it warns).
            _, self._pump_group = portal.start_task(_host, self._host_done)
            # Built on the loop's thread: what the engine and its clients make belongs there.
            facade = portal.call(build)
            running = portal.wrap_async_context_manager(facade)
            try:
                running.__enter__()
            except BaseException:
                portal.call(facade.aclose)  # a failed start may leave part of it open
                raise
        except BaseException:
            self._closing = True  # nothing to close for __del__
            portal.call(portal.stop, True)
            portal_cm.__exit__(None, None, None)
            raise
        self._portal_cm = portal_cm
        self._portal = portal
        self._facade = facade
        self._running: AbstractContextManager[MultiModelFailover] = running

    # -- running work on the loop ------------------------------------------------------------

    def _await(self, func: Callable[[], Awaitable[T]]) -> T:
        """``await func()`` on the loop, from this thread."""
        return cast(T, self._submit(func))

    def _run(self, func: Callable[[], T]) -> T:
        """``func()`` on the loop's thread, from this thread."""
        return cast(T, self._submit(func))

    def _submit(self, func: Callable[[], Any]) -> Any:
        if self._closing:
            raise EngineClosedError(_CLOSED)
        try:
            future = self._portal.start_task_soon(func)
        except RuntimeError:
            if self._closing:  # the loop stopped between the check and the hand-over
                raise EngineClosedError(_CLOSED) from None
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # Only closing cancels what runs on the loop: the engine had ended the call.
            raise EngineClosedError(f"{_CLOSED} (closed while this call was in flight)") from None
        except BaseException:
            if not future.done():
                # Interrupted while waiting (KeyboardInterrupt): cancel the call, which
                # records call_cancelled, rather than leave it running for nobody.
                future.cancel()
            raise

    def _read(self, func: Callable[[], T]) -> T:
        """A read of the live view: on the loop, where the fold runs, while it runs (closing
        or not: a scrape during a long grace answers at once); directly once closed."""
        if self._closed.is_set() or threading.get_ident() == self._loop_thread:
            return func()
        try:
            return self._portal.call(func)
        except (RuntimeError, concurrent.futures.CancelledError):
            if not self._closing:
                raise
        # The loop stopped (or was stopping under the read): the close is about to finish.
        self._closed.wait()
        return func()

    # -- the engine's surface ------------------------------------------------------------------

    @property
    def facade(self) -> MultiModelFailover:
        """The async ``MultiModelFailover`` running on the background loop (use it only from
        coroutines run on that loop)."""
        return self._facade

    @property
    def event_store(self) -> EventStore:
        """The event log."""
        return self._facade.event_store

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The configured model ids, in configured order."""
        return self._facade.model_ids

    @property
    def closed(self) -> bool:
        """Whether closing has begun: no new call is accepted."""
        return self._closing

    @property
    def states(self) -> dict[str, HealthState]:
        """Each configured model's health state now."""
        return self._read(lambda: self._facade.states)

    @property
    def rotation(self) -> list[str]:
        """The model ids the next call would try, in order."""
        return self._read(lambda: self._facade.rotation)

    def metrics(self) -> Metrics:
        """A copy of the live metrics; always equal to ``replay(event_store).metrics``."""
        return self._read(self._facade.metrics)

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection (metrics, states, audit trail)."""
        return self._read(self._facade.snapshot)

    def call(
        self, prompt: Prompt, timeout: float | None = None, *, params: Params | None = None
    ) -> Any:
        """The first successful client's response, as is (see ``MultiModelFailover.call``).

        Raises what the async call raises (``AllModelsFailedError``, ``DeadlineExceededError``,
        the client's ``ModelError`` for a bad request...), and ``EngineClosedError`` once
        closed.
        """
        checked = check_params(params)
        return self._await(partial(self._facade.call, prompt, timeout, params=checked))

    def call_with_outcome(
        self, prompt: Prompt, *, timeout: float | None = None, params: Params | None = None
    ) -> CallOutcome:
        """As ``call``, with the serving model, counts and call id."""
        checked = check_params(params)
        return self._await(
            partial(self._facade.call_with_outcome, prompt, timeout=timeout, params=checked)
        )

    @overload
    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: Literal["none"] | None = None,
        params: Params | None = None,
    ) -> SyncStream[str]: ...

    @overload
    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: Literal["restart", "continue"],
        params: Params | None = None,
    ) -> SyncStream[str | StreamSwitch]: ...

    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: str | None = None,
        params: Params | None = None,
    ) -> SyncStream[Any]:
        """The answer as a plain iterator of text chunks (see ``MultiModelFailover.stream``);
        ``.outcome`` once it has ended. It starts when first iterated; ``close()`` (or
        ``with``) leaves it early and releases the connection."""
        if self._closing:
            raise EngineClosedError(_CLOSED)
        checked = check_params(params)
        return SyncStream(self, self._facade.engine.open_stream(prompt, timeout, recovery, checked))

    def check_health(self) -> dict[str, HealthState]:
        """Probe every client not in maintenance now; returns the states afterwards."""
        return self._await(self._facade.check_health)

    def set_maintenance(
        self, model_id: str, on: bool, *, reason: str = "", by: str = "api"
    ) -> None:
        """Take ``model_id`` out of rotation (``on=True``) or put it back (``on=False``)."""
        self._await(partial(self._facade.set_maintenance, model_id, on, reason=reason, by=by))

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, *, grace: float = DEFAULT_GRACE) -> None:
        """Close: no new calls; calls in flight in other threads get ``grace`` seconds to
        finish, then end with ``EngineClosedError``; the log is flushed and closed and the
        loop's thread stops. Idempotent; a second closer waits for the first to finish."""
        with self._lock:
            first, self._closing = not self._closing, True
        if not first:
            self._closed.wait()
            return
        portal = self._portal
        try:
            try:
                self._close_engine(grace)
            finally:
                try:
                    self._running.__exit__(None, None, None)  # the loops end in their own task
                finally:
                    portal.call(self._release)
        finally:
            # What still runs is cut short: its thread gets EngineClosedError.
            with contextlib.suppress(RuntimeError):  # already stopped
                portal.call(portal.stop, True)
            self._portal_cm.__exit__(None, None, None)
            self._closed.set()

    def _close_engine(self, grace: float) -> None:
        """The engine's close on the loop; interrupted (Ctrl-C), cut short rather than waited
        out: the cancelled close still ends the calls in flight, records their end and
        flushes the log, and what ``close()`` does next waits for it."""
        closing = self._portal.start_task_soon(partial(self._facade.aclose, grace=grace))
        try:
            closing.result()
        except BaseException:
            if not closing.done():
                closing.cancel()
            raise

    async def _release(self) -> None:
        """Stop the streams' pumps, then close the given clients (no stream uses them now)."""
        try:
            for pump in list(self._pumps):
                pump.release()
            self._pump_group.cancel_scope.cancel()
            await self._host_done.wait()
        finally:
            await _close_all(self._clients)

    def _forget(self, pump: _Pump) -> None:
        """Stop ``pump`` without waiting (its reader is gone), from any thread."""
        if self._closing:
            return  # closing stops every pump
        if threading.get_ident() == self._loop_thread:
            pump.cancel()
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            self._portal.start_task_soon(pump.stop)

    def __enter__(self) -> Self:
        if self._closing:
            raise EngineClosedError(_CLOSED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closing", True) or sys.is_finalizing():
            return
        warnings.warn(
            f"unclosed SyncMultiModelFailover ({', '.join(self._facade.model_ids)}): use `with` "
            "or close()",
            ResourceWarning,
            source=self,
            stacklevel=2,
        )
        # Not here: this may run on the loop's own thread, which closing must wait for.
        threading.Thread(target=self.close, kwargs={"grace": 0.0}, daemon=True).start()


def _closable(clients: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """The given clients with an ``aclose()``, each once (one may serve under two ids)."""
    if isinstance(clients, Mapping):
        given = list(clients.values())
    elif isinstance(clients, Sequence):
        given = list(clients)
    else:
        given = []  # not a collection: the engine refuses it, nothing to close
    unique = {id(client): client for client in given}
    return [client for client in unique.values() if callable(getattr(client, "aclose", None))]


async def _close_all(clients: list[Any]) -> None:
    """``aclose()`` each client, shielded (closing is cleanup, even when cut short); one that
    fails does not keep the others open: the first error is raised once all were tried."""
    error: Exception | None = None
    for client in clients:
        try:
            with anyio.CancelScope(shield=True):
                closed = client.aclose()
                if inspect.isawaitable(closed):
                    await closed
        except Exception as exc:  # noqa: BLE001 - raised below, after the others are closed
            error = error or exc
    if error is not None:
        raise error


async def _host(
    done: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[anyio.abc.TaskGroup] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The task group the streams' pumps run in, open until closing."""
    try:
        async with anyio.create_task_group() as group:
            task_status.started(group)
            await anyio.sleep_forever()
    finally:
        done.set()


class _Pump:
    """Reads an engine stream on the loop and hands its chunks to the reading thread.

    Every method runs on the loop. ``pumps`` holds it until its reader is done with it.
    """

    def __init__(self, stream: FailoverStream[Any], pumps: set[_Pump]) -> None:
        self.stream = stream
        self.pumps = pumps
        pumps.add(self)
        self.error: Exception | None = None
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        # No buffer: the next chunk is read from the model only once the last one was taken.
        self.send: MemoryObjectSendStream[Any]
        self.receive: MemoryObjectReceiveStream[Any]
        self.send, self.receive = anyio.create_memory_object_stream[Any](0)

    async def run(self) -> None:
        try:
            with self.scope:
                async with self.stream:  # closed on every way out: the connection released
                    async for chunk in self.stream:
                        try:
                            await self.send.send(chunk)
                        except anyio.BrokenResourceError:
                            return  # the reader closed the iterator
        except Exception as exc:  # noqa: BLE001 - handed to the reading thread, raised there
            self.error = exc
        finally:
            self.send.close()  # after ``error`` is set: the reader sees it with the end
            self.done.set()

    async def next(self) -> Any:
        """The next chunk; ``anyio.EndOfStream`` once the stream has ended."""
        try:
            return await self.receive.receive()
        except anyio.EndOfStream:
            self.release()
            raise

    def release(self) -> None:
        """The reader is done: no chunk is handed over any more."""
        self.receive.close()
        self.pumps.discard(self)

    def cancel(self) -> None:
        self.release()
        self.scope.cancel()

    async def stop(self) -> None:
        """Stop reading, and return once the stream has been closed."""
        self.cancel()
        await self.done.wait()


class SyncStream(Generic[_Chunk_co]):
    """A plain iterator over a stream's chunks (``SyncMultiModelFailover.stream``).

    ``outcome`` is set once it has ended; ``close()`` or ``with`` leaves it early and releases
    the connection. Read it from one thread at a time.
    """

    def __init__(self, owner: SyncMultiModelFailover, stream: FailoverStream[Any]) -> None:
        self._owner = owner
        self._stream = stream
        self._pump: _Pump | None = None
        self._ended = False

    @property
    def outcome(self) -> StreamOutcome | None:
        """Who served the stream and what it took, once it has ended (None before)."""
        return self._stream.outcome

    def __iter__(self) -> Iterator[_Chunk_co]:
        return self

    def __next__(self) -> _Chunk_co:
        if self._ended:
            raise StopIteration
        owner = self._owner
        try:
            if self._pump is None:
                owner._run(self._start)
            pump = cast(_Pump, self._pump)
            return cast(_Chunk_co, owner._await(pump.next))
        except anyio.EndOfStream:
            self._ended = True
            if pump.error is not None:
                # As the async stream raised it: its type, cause and attempts.
                raise pump.error  # noqa: B904
            raise StopIteration from None
        except anyio.ClosedResourceError:
            # Closed under the reader: by closing the engine (the answer is not complete),
            # or by this stream's own close() in another thread.
            self._ended = True
            if owner.closed:
                raise EngineClosedError(_CLOSED) from None
            raise StopIteration from None
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit) or the engine closing: the reader
            # leaves. The chunk in transit may be lost, so the stream cannot go on: stop it
            # now (close() then waits for the release) rather than hold the model.
            self._ended = True
            self._stop_soon()
            raise

    def _start(self) -> None:
        """On the loop: start the pump. ``_pump`` is set before ``_ended`` is read, and the
        reader sets ``_ended`` before it reads ``_pump``: whichever comes second stops it."""
        pump = _Pump(self._stream, self._owner._pumps)
        self._pump = pump
        self._owner._pump_group.start_soon(pump.run)
        if self._ended:  # the reader was interrupted while this was on its way
            pump.cancel()

    def _stop_soon(self) -> None:
        if self._pump is not None:
            self._owner._forget(self._pump)

    def close(self) -> None:
        """Leave the stream: the model's connection is released and the log records the end
        (``call_cancelled`` when it had not ended). Idempotent."""
        self._ended = True
        pump = self._pump
        if pump is None or pump.done.is_set():
            return  # never started (nothing ran, nothing recorded), or ended and released
        with contextlib.suppress(EngineClosedError):  # closing the engine ended it
            self._owner._await(pump.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        pump = getattr(self, "_pump", None)
        if pump is not None and not self._ended:
            self._owner._forget(pump)


__all__ = ["Backend", "SyncMultiModelFailover", "SyncStream"]
