"""Streaming with failover: fail over freely until the first chunk, never after it.

Until a client has delivered its first chunk a stream is like a call: attempts, backoff,
failover, health and the same events. Once text has reached the caller, switching to another
model would splice two different answers into one (the second model does not know what the
first one said, and cannot continue its sentence), so a failure after the first chunk raises
``StreamInterruptedError`` saying how much was delivered, and the log records it
(``attempt_failed`` then ``call_failed`` with reason ``stream_interrupted``). The caller knows
what it has shown and decides: retry the whole prompt, or keep the partial answer.

A client streams when it has ``stream(prompt)`` returning an async iterator of text; any other
client is called once and its answer (``.text``, or the ``str`` itself) is one chunk.

``timeout`` and the call budget bound the wait for the first chunk (the failover phase); after
it, each chunk is bounded by the client's own read timeout, so a long answer is not cut off.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final

import anyio
from loguru import logger

# The engine's own helpers, so that a stream attempts, backs off, fails over and records
# exactly as a call does. The engine imports this module lazily (inside ``stream``).
from .engine import (
    FailoverEngine,
    _AttemptError,
    _Call,
    _check_positive,
    _check_prompt,
    _Client,
    _GaveUp,
    _stop_kind,
)
from .errors import AttemptRecord, ErrorKind, ModelError
from .events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    CallCancelled,
    CallFailed,
)
from .health import HealthState
from .scrub import describe_exception

INTERRUPTED: Final = "stream_interrupted"


class StreamInterruptedError(ModelError):
    """A stream broke after it had delivered text; no other model was tried.

    ``chunks`` and ``chars`` say how much of the answer the caller already received.
    """

    def __init__(
        self, message: str, *, kind: ErrorKind, model_id: str, call_id: str, chunks: int, chars: int
    ) -> None:
        super().__init__(message, kind=kind, model_id=model_id)
        self.call_id = call_id
        self.chunks = chunks
        self.chars = chars


class _End:
    """The stream ended (a sentinel: ``None`` could be a chunk of a careless client)."""


_END: Final = _End()


class _Opened:
    """A stream that delivered its first chunk (or ended without any)."""

    __slots__ = ("attempt", "chunks", "first", "model_id", "started")

    def __init__(
        self,
        model_id: str,
        attempt: int,
        started: float,
        first: str | _End,
        chunks: AsyncIterator[str],
    ) -> None:
        self.model_id = model_id
        self.attempt = attempt
        self.started = started
        self.first = first
        self.chunks = chunks


def _text_of(response: Any) -> str:
    if isinstance(response, str):
        return response
    text = getattr(response, "text", None)
    return text if isinstance(text, str) else str(response)


async def _whole_answer(client: _Client, prompt: Any) -> AsyncGenerator[str, None]:
    """A client that cannot stream answers in one chunk."""
    text = _text_of(await client.call(prompt))
    if text:
        yield text


async def _open(client: _Client, prompt: Any) -> AsyncIterator[str]:
    stream = getattr(client.client, "stream", None)
    if not callable(stream):
        return _whole_answer(client, prompt)
    chunks = stream(prompt)
    if not hasattr(chunks, "__anext__"):
        chunks = await chunks
    return chunks  # type: ignore[no-any-return]


async def _next(chunks: AsyncIterator[str]) -> str | _End:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return _END


async def _close(chunks: AsyncIterator[str] | None) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


def _classify(exc: Exception) -> tuple[ErrorKind, str, float | None]:
    if isinstance(exc, ModelError):
        return exc.kind, exc.message, exc.retry_after
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT, describe_exception(exc), None
    return ErrorKind.UNKNOWN, describe_exception(exc), None


async def _first_chunk(
    engine: FailoverEngine, client: _Client, prompt: Any, remaining: float
) -> tuple[AsyncIterator[str], str | _End]:
    """Open a stream and wait for its first chunk, as ``engine._attempt`` waits for a call."""
    attempt_timeout = engine.retry_policy.attempt_timeout
    by_attempt = attempt_timeout is not None and attempt_timeout < remaining
    limit = attempt_timeout if by_attempt and attempt_timeout is not None else remaining
    chunks: AsyncIterator[str] | None = None
    try:
        with anyio.move_on_after(limit) as scope:
            chunks = await _open(client, prompt)
            return chunks, await _next(chunks)
    except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
        await _close(chunks)
        raise _AttemptError(*_classify(exc)) from None
    await _close(chunks)
    assert scope.cancelled_caught  # noqa: S101 - the only way past the with block
    if by_attempt:
        raise _AttemptError(ErrorKind.TIMEOUT, f"no first chunk within {limit:g}s")
    raise _AttemptError(ErrorKind.DEADLINE, f"call deadline reached after {limit:g}s")


async def _open_client(engine: FailoverEngine, call: _Call, model_id: str, prompt: Any) -> _Opened:
    """Attempts on one client until a first chunk (returned) or ``_GaveUp`` (raised)."""
    client = engine._by_id[model_id]
    previous_delay: float | None = None
    last_kind = ErrorKind.UNKNOWN
    for attempt in itertools.count(1):
        stop = engine._stop_reason(call)
        if stop is not None:
            raise _GaveUp(_stop_kind(stop, last_kind), f"{stop} reached", stop)
        remaining = call.deadline - engine._clock()
        call.attempts += 1
        engine._emit(
            AttemptStarted(
                at=engine._now(), call_id=call.call_id, model_id=model_id, attempt=attempt
            )
        )
        started = engine._clock()
        try:
            chunks, first = await _first_chunk(engine, client, prompt, remaining)
        except _AttemptError as failure:
            delay = engine._after_failure(call, model_id, attempt, started, failure, previous_delay)
            last_kind = failure.kind
            await engine._sleep(delay)
            previous_delay = delay
            continue
        return _Opened(model_id, attempt, started, first, chunks)
    raise AssertionError("unreachable")  # pragma: no cover


async def _open_any(engine: FailoverEngine, call: _Call, order: list[str], prompt: Any) -> _Opened:
    """The first client in ``order`` that delivers a first chunk; fails over like a call."""

    async def attempt(model_id: str) -> _Opened:
        return await _open_client(engine, call, model_id, prompt)

    return await engine._through_order(call, order, attempt)


def _finish(engine: FailoverEngine, call: _Call, opened: _Opened) -> None:
    model_id = opened.model_id
    engine._emit(
        AttemptSucceeded(
            at=engine._now(),
            call_id=call.call_id,
            model_id=model_id,
            attempt=opened.attempt,
            latency=engine._clock() - opened.started,
        )
    )
    if engine._snap.state_of(model_id).state in (HealthState.DEGRADED, HealthState.UNHEALTHY):
        engine._change_state(model_id, "recover", "a call succeeded")
    engine._succeeded(call, model_id, None)


def _interrupted(
    engine: FailoverEngine, call: _Call, opened: _Opened, exc: Exception, chunks: int, chars: int
) -> StreamInterruptedError:
    """Record a stream that broke after delivering text; the error to raise."""
    kind, cause, _ = _classify(exc)
    model_id = opened.model_id
    message = (
        f"stream from {model_id} broke after {chunks} chunk(s), {chars} char(s) delivered; "
        f"not failed over: {cause}"
    )
    call.records.append(
        AttemptRecord(model_id=model_id, attempt=opened.attempt, error_kind=kind, message=message)
    )
    engine._emit(
        AttemptFailed(
            at=engine._now(),
            call_id=call.call_id,
            model_id=model_id,
            attempt=opened.attempt,
            latency=engine._clock() - opened.started,
            error_kind=kind,
            message=message,
            final=True,
            counts=kind.counts_against_health,
        )
    )
    engine._gave_up_on(model_id, kind, message)
    engine._emit(
        CallFailed(
            at=engine._now(),
            call_id=call.call_id,
            reason=INTERRUPTED,
            error_kind=kind,
            attempts=call.attempts,
            failovers=call.failovers,
            latency=engine._clock() - call.start,
        )
    )
    logger.bind(call_id=call.call_id, model_id=model_id, error_kind=kind.value).warning(
        "stream from {} broke after {} char(s); not failing over mid-answer", model_id, chars
    )
    return StreamInterruptedError(
        message, kind=kind, model_id=model_id, call_id=call.call_id, chunks=chunks, chars=chars
    )


async def stream_with_failover(
    engine: FailoverEngine, prompt: Any, *, timeout: float | None = None
) -> AsyncGenerator[str, None]:
    """Stream the answer to ``prompt`` as text chunks, failing over until the first chunk.

    Raises what ``engine.call`` raises when no client delivers a first chunk, and
    ``StreamInterruptedError`` when the serving client fails after it. Breaking out of the
    iteration (or cancelling) records ``call_cancelled``; close it with
    ``contextlib.aclosing`` to release the connection at once.
    """
    _check_prompt(prompt)
    budget = engine.retry_policy.call_budget
    if timeout is not None:
        budget = min(budget, _check_positive("timeout", timeout))
    if engine._closed:
        raise RuntimeError("this MultiModelFailover is closed")
    start = engine._clock()
    call = _Call(next(engine._call_ids), start, start + budget)
    order, last_resort = engine._plan()
    engine._emit(engine._call_started(call, order, last_resort, prompt))
    engine._budget.record_call()
    terminal = False
    opened: _Opened | None = None
    try:
        try:
            opened = await _open_any(engine, call, order, prompt)
        except ModelError:
            terminal = True
            await engine.event_store.wait_committed(engine._ticket)
            raise
        chunks = chars = 0
        chunk = opened.first
        while not isinstance(chunk, _End):
            yield chunk
            chunks, chars = chunks + 1, chars + len(chunk)
            try:
                chunk = await _next(opened.chunks)
            except Exception as exc:  # noqa: BLE001 - any failure after the first chunk
                terminal = True
                error = _interrupted(engine, call, opened, exc, chunks, chars)
                await engine.event_store.wait_committed(engine._ticket)
                raise error from None
        terminal = True
        _finish(engine, call, opened)
        await engine.event_store.wait_committed(engine._ticket)
    finally:
        if opened is not None:
            await _close(opened.chunks)
        if not terminal and not engine._closed:
            engine._emit(
                CallCancelled(
                    at=engine._now(),
                    call_id=call.call_id,
                    model_id=call.model_id,
                    attempts=call.attempts,
                    latency=engine._clock() - call.start,
                )
            )


__all__ = ["INTERRUPTED", "StreamInterruptedError", "stream_with_failover"]
