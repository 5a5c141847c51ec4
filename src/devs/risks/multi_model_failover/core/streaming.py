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

from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from typing import Any, Final

import anyio
from loguru import logger

# The engine's own helpers, so that a stream attempts, backs off, fails over and records
# exactly as a call does. The engine imports this module lazily (inside ``stream``).
from .engine import (
    FailoverEngine,
    _Call,
    _Client,
    _Failure,
    _failure,
    _timed_out,
)
from .errors import ErrorKind, ModelError
from .events import CallFailed

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


async def _first_chunk(
    engine: FailoverEngine, client: _Client, prompt: Any, remaining: float
) -> tuple[AsyncIterator[str], str | _End] | _Failure:
    """Open a stream and wait for its first chunk, as ``engine._attempt`` waits for a call."""
    limit, by_attempt = engine._attempt_limit(remaining)
    chunks: AsyncIterator[str] | None = None
    try:
        with anyio.move_on_after(limit):
            chunks = await _open(client, prompt)
            return chunks, await _next(chunks)
    except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
        await _close(chunks)
        return _failure(exc, prompt)
    await _close(chunks)
    return _timed_out(limit, by_attempt, "no first chunk within")


async def _open_any(
    engine: FailoverEngine, call: _Call, order: tuple[str, ...], prompt: Any
) -> _Opened:
    """The first client in ``order`` that delivers a first chunk; fails over like a call."""

    async def attempt(call: _Call, model_id: str) -> _Opened:
        (chunks, first), attempt, started = await engine._attempts(
            call, model_id, partial(_first_chunk, engine)
        )
        return _Opened(model_id, attempt, started, first, chunks)

    return await engine._through_order(call, order, attempt)


def _finish(engine: FailoverEngine, call: _Call, opened: _Opened) -> None:
    engine._attempt_succeeded(call, opened.model_id, opened.attempt, opened.started)
    engine._succeeded(call, opened.model_id, None)


def _interrupted(
    engine: FailoverEngine,
    call: _Call,
    opened: _Opened,
    exc: Exception,
    prompt: Any,
    chunks: int,
    chars: int,
) -> StreamInterruptedError:
    """Record a stream that broke after delivering text; the error to raise."""
    failure = _failure(exc, prompt)
    kind, cause = failure.kind, failure.message
    model_id = opened.model_id
    message = (
        f"stream from {model_id} broke after {chunks} chunk(s), {chars} char(s) delivered; "
        f"not failed over: {cause}"
    )
    engine._attempt_failed(call, model_id, opened.attempt, opened.started, kind, message, True)
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
    logger.warning(
        "stream from {} broke after {} char(s); not failing over mid-answer",
        model_id,
        chars,
        call_id=call.call_id,
        model_id=model_id,
        error_kind=kind.value,
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
    call, order = engine._begin_call(prompt, timeout)
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
                error = _interrupted(engine, call, opened, exc, prompt, chunks, chars)
                await engine.event_store.wait_committed(engine._ticket)
                raise error from None
        terminal = True
        _finish(engine, call, opened)
        await engine.event_store.wait_committed(engine._ticket)
    finally:
        if opened is not None:
            await _close(opened.chunks)
        if not terminal and not engine._closed:
            engine._cancelled(call)


__all__ = ["INTERRUPTED", "StreamInterruptedError", "stream_with_failover"]
