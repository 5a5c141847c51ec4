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

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final

import anyio
from loguru import logger

from .calls import (
    Call,
    EngineClosedError,
    FailReason,
    Failure,
    failure,
    foreign_cancel_failure,
    timed_out,
)
from .cancellation import is_foreign_cancel
from .errors import ErrorKind, ModelError
from .livelog import LiveLog
from .registry import RegisteredClient
from .runner import CallRunner

INTERRUPTED: Final = FailReason.STREAM_INTERRUPTED


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


def _text_of(response: Any) -> str:
    if isinstance(response, str):
        return response
    text = getattr(response, "text", None)
    return text if isinstance(text, str) else str(response)


async def _whole_answer(client: RegisteredClient, prompt: Any) -> AsyncGenerator[str, None]:
    """A client that cannot stream answers in one chunk."""
    text = _text_of(await client.call(prompt))
    if text:
        yield text


async def _open(client: RegisteredClient, prompt: Any) -> AsyncIterator[str]:
    stream = getattr(client.client, "stream", None)
    if not callable(stream):
        return _whole_answer(client, prompt)
    chunks = stream(prompt)
    if not hasattr(chunks, "__anext__"):
        chunks = await chunks
    return chunks  # type: ignore[no-any-return]


async def _next(chunks: AsyncIterator[str]) -> str | _End:
    try:
        chunk = await chunks.__anext__()
    except StopAsyncIteration:
        return _END
    if not isinstance(chunk, str):
        raise TypeError(f"the client's stream yielded {type(chunk).__name__}, not text")
    return chunk


async def _close(chunks: AsyncIterator[str] | None) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


class _Streamer:
    """One stream's attempts (to its first chunk) and its chunks after that."""

    def __init__(self, runner: CallRunner, log: LiveLog, call: Call) -> None:
        self.runner = runner
        self.log = log
        self.call = call
        self.chunks: AsyncIterator[str] | None = None

    async def first_chunk(
        self, client: RegisteredClient, prompt: Any, remaining: float, call: Call
    ) -> str | _End | Failure:
        """Open a stream and wait for its first chunk, as ``runner.attempt`` waits for a call."""
        limit, by_attempt = self.runner.attempt_limit(remaining)
        chunks: AsyncIterator[str] | None = None
        try:
            with self.runner.timer.move_on_after(limit) as scope:
                call.cut = scope
                chunks = await _open(client, prompt)
                first = await _next(chunks)
                self.chunks = chunks
                return first
        except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
            await _close(chunks)
            return failure(exc, prompt)
        except asyncio.CancelledError as exc:
            await _close(chunks)
            return foreign_cancel_failure(exc, prompt)
        finally:
            call.cut = None
        await _close(chunks)
        return timed_out(limit, by_attempt, "no first chunk within", call)

    async def next_chunk(self) -> str | _End:
        """The next chunk; an engine closing meanwhile cuts the wait short."""
        assert self.chunks is not None  # noqa: S101 - only after first_chunk succeeded
        call = self.call
        chunk: str | _End = _END
        with anyio.CancelScope() as scope:
            call.cut = scope
            chunk = await _next(self.chunks)
        call.cut = None
        if call.closed:
            raise self.runner.ledger.closed_during(call)
        return chunk

    def interrupted(
        self, exc: BaseException, prompt: Any, chunks: int, chars: int
    ) -> StreamInterruptedError:
        """Record a stream that broke after delivering text; the error to raise."""
        runner, call = self.runner, self.call
        failed = failure(exc, prompt)
        kind, cause = failed.kind, failed.message
        model_id = call.model_id or ""
        message = (
            f"stream from {model_id} broke after {chunks} chunk(s), {chars} char(s) delivered; "
            f"not failed over: {cause}"
        )
        failed.message = message
        runner.ledger.attempt_failed(call, model_id, failed, True)
        runner.monitor.gave_up_on(model_id, kind, message)
        runner.ledger.record_failed(call, INTERRUPTED, kind)
        logger.warning(
            "stream from {} broke after {} char(s); not failing over mid-answer",
            model_id,
            chars,
            call_id=call.call_id,
            model_id=model_id,
            error_kind=kind.value,
        )
        error = StreamInterruptedError(
            message,
            kind=kind,
            model_id=model_id,
            call_id=call.call_id,
            chunks=chunks,
            chars=chars,
        )
        error.__cause__ = failed.error
        return error


async def stream_with_failover(
    runner: CallRunner, log: LiveLog, prompt: Any, *, timeout: float | None = None
) -> AsyncGenerator[str, None]:
    """Stream the answer to ``prompt`` as text chunks, failing over until the first chunk.

    Raises what ``engine.call`` raises when no client delivers a first chunk, and
    ``StreamInterruptedError`` when the serving client fails after it. Breaking out of the
    iteration (or cancelling) records ``call_cancelled``; close it with
    ``contextlib.aclosing`` to release the connection at once.
    """
    call, order = runner.begin(prompt, timeout)
    streamer = _Streamer(runner, log, call)
    try:
        try:
            chunk: str | _End = await runner.run(call, order, streamer.first_chunk)
        except ModelError:
            await runner.ledger.commit(call, "call_failed")
            raise
        except EngineClosedError:
            await log.commit()
            raise
        chunks = chars = 0
        while not isinstance(chunk, _End):
            yield chunk
            if call.closed:
                raise runner.ledger.closed_during(call)
            chunks, chars = chunks + 1, chars + len(chunk)
            try:
                chunk = await streamer.next_chunk()
            except EngineClosedError:
                raise
            except (Exception, asyncio.CancelledError) as exc:  # any failure after the first chunk
                if isinstance(exc, asyncio.CancelledError) and not is_foreign_cancel(exc):
                    raise
                error = streamer.interrupted(exc, prompt, chunks, chars)
                await runner.ledger.commit(call, "call_failed")
                raise error from error.__cause__
        runner.ledger.succeeded(call, runner.attempt_succeeded(call), None)
        await runner.ledger.commit(call, "call_succeeded")
    finally:
        await _close(streamer.chunks)
        if not call.ended:
            runner.ledger.cancelled(call)


__all__ = ["INTERRUPTED", "StreamInterruptedError", "stream_with_failover"]
