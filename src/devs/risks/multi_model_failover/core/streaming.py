"""Streaming with failover: fail over freely until the first chunk; after it, only on request.

Until a client has delivered its first chunk a stream is like a call: attempts, backoff,
failover, health and the same events. The first chunk must come within the policy's
``first_token_timeout``, and each chunk after it within ``idle_timeout`` (a stall).

Once text has reached the caller, switching to another model would splice two different
answers into one, so by default (``recovery="none"``) a failure after the first chunk raises
``StreamInterruptedError`` saying how much was delivered, and the log records it
(``attempt_failed`` then ``call_failed`` with reason ``stream_interrupted``). A caller that
wants a complete answer opts in:

- ``recovery="restart"``: the request starts again on the next client of the call's order
  (no prefill). Before the new text the stream yields a ``StreamSwitch`` with
  ``mode="restart"``: everything received before it is void.
- ``recovery="continue"``: a next client that accepts an assistant prefill
  (``supports_prefill``) gets the text so far as a final assistant message and continues it
  (``StreamSwitch`` with ``mode="continue"``: nothing is void). A client without prefill
  support gets a restart, and so does one that rejects the prefilled request
  (``bad_request``: it is asked again at once, without the prefill, in the same attempt).

A rescue gets the call's budget afresh for its first chunk. When no client can finish the
answer, ``StreamInterruptedError`` is raised: a truncated answer is never reported complete.

A client streams when it has ``stream(prompt)`` returning an async iterator of text; any other
client is called once and its answer (``.text``, or the ``str`` itself) is one chunk. Once a
stream ends, ``FailoverStream.outcome`` says who served it, what it took and (from the client's
stream object, when it has them) its usage, finish reason, served model and request id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final, Literal, TypeVar

import msgspec
from loguru import logger

from .calls import EngineClosedError, FailReason, Failure, GaveUp, check_params, failure
from .cancellation import is_foreign_cancel
from .errors import ErrorKind, ModelError
from .livelog import LiveLog
from .pricing import tokens_of
from .responses import ChunkStream, ToolCall, Usage
from .runner import CallRunner
from .stream_attempt import End, StreamAttempt, close_chunks, stream_meta

INTERRUPTED: Final = FailReason.STREAM_INTERRUPTED
Recovery = Literal["none", "restart", "continue"]
RECOVERIES: Final = ("none", "restart", "continue")
_Chunk_co = TypeVar("_Chunk_co", covariant=True)


class StreamInterruptedError(ModelError):
    """A stream broke after it had delivered text, and no client could finish the answer
    (with ``recovery="none"``, none was asked to).

    ``chunks`` and ``chars`` say how much of the answer the caller already received.
    """

    def __init__(
        self, message: str, *, kind: ErrorKind, model_id: str, call_id: str, chunks: int, chars: int
    ) -> None:
        super().__init__(message, kind=kind, model_id=model_id)
        self.call_id = call_id
        self.chunks = chunks
        self.chars = chars


class StreamSwitch(msgspec.Struct, frozen=True, kw_only=True):
    """Yielded in-band when a broken stream goes on from another client (opt-in recovery).

    ``mode="restart"``: every chunk received before this one is void, the answer starts
    again. ``mode="continue"``: the new client continues the text so far; nothing is void.
    ``discarded_chunks``/``discarded_chars``: what the switch voids (0 for a continuation).
    """

    from_model: str
    to_model: str
    mode: Literal["restart", "continue"]
    reason: ErrorKind
    discarded_chunks: int = 0
    discarded_chars: int = 0


class StreamOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A finished stream: who served it and what it took. ``usage``, ``finish_reason``,
    ``model`` (as served), ``request_id`` and ``tool_calls`` come from the serving client's
    stream, when it reports them; after a switch they are the serving client's alone.
    ``input_tokens``, ``output_tokens`` and ``cost`` add up the whole call (as in
    ``CallOutcome``): a broken stream's reported usage included."""

    model_id: str
    call_id: str
    attempts: int
    failovers: int
    latency: float
    restarts: int = 0
    model: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


class FailoverStream(ChunkStream[_Chunk_co]):
    """The async iterator ``stream()`` returns; ``outcome`` is set once it has ended.

    Close it early with ``async with`` or ``contextlib.aclosing`` to release the connection at
    once (breaking out records ``call_cancelled``).
    """

    outcome: StreamOutcome | None

    def __init__(self, start: Callable[[FailoverStream[Any]], AsyncGenerator[Any, None]]) -> None:
        self.outcome = None
        self._chunks = start(self)


def open_stream(
    runner: CallRunner,
    log: LiveLog,
    prompt: Any,
    timeout: float | None,
    recovery: str | None,
    params: Mapping[str, Any] | None = None,
) -> FailoverStream[Any]:
    """The stream of ``FailoverEngine.stream``: it starts when first iterated (its options
    are checked at once)."""
    mode = check_recovery(recovery)
    frozen = check_params(params)
    return FailoverStream(
        lambda holder: stream_with_failover(
            runner, log, prompt, holder, timeout=timeout, recovery=mode, params=frozen
        )
    )


def check_recovery(recovery: object) -> Recovery:
    """``recovery`` checked; ``ValueError`` naming it unless it is one of ``RECOVERIES``."""
    if recovery is None:
        return "none"
    if recovery not in RECOVERIES:
        raise ValueError(f"recovery must be one of {', '.join(RECOVERIES)}, got {recovery!r}")
    return recovery


class _Delivered:
    """What the caller has received: from the serving client (void on a restart) and in
    all (the prefill of a continuation)."""

    __slots__ = ("chars", "chunks", "keep", "text")

    def __init__(self, keep: bool) -> None:
        self.chunks = self.chars = 0
        self.keep = keep
        self.text: list[str] = []

    def add(self, chunk: str) -> None:
        self.chunks += 1
        self.chars += len(chunk)
        if self.keep:
            self.text.append(chunk)


async def stream_with_failover(
    runner: CallRunner,
    log: LiveLog,
    prompt: Any,
    holder: FailoverStream[Any],
    *,
    timeout: float | None = None,
    recovery: Recovery = "none",
    params: Mapping[str, Any] | None = None,
) -> AsyncGenerator[Any, None]:
    """Stream the answer to ``prompt``; see the module docstring. ``holder`` gets the outcome.

    Raises what ``engine.call`` raises when no client delivers a first chunk, and
    ``StreamInterruptedError`` when the answer breaks and cannot be finished.
    """
    await log.aload()  # at once when the log is loaded (the engine's first use loads it)
    call, order = runner.begin(prompt, timeout, params, stream=recovery)
    attempt = StreamAttempt(runner, call)
    delivered = _Delivered(keep=recovery == "continue")
    restarts = 0
    try:
        try:
            chunk: str | End = await runner.run(call, order, attempt.first_chunk)
        except ModelError:
            await runner.ledger.commit(call, "call_failed")
            raise
        except EngineClosedError:
            await log.commit()
            raise
        while not isinstance(chunk, End):
            yield chunk
            if call.closed:
                raise runner.ledger.closed_during(call)
            delivered.add(chunk)
            try:
                chunk = await attempt.next_chunk()
            except EngineClosedError:
                raise
            except (Exception, asyncio.CancelledError) as exc:  # a failure mid-answer
                if isinstance(exc, asyncio.CancelledError) and not is_foreign_cancel(exc):
                    raise
                broke = failure(exc, prompt)
            else:
                continue
            rest = _rest_of(order, call.model_id)
            if recovery == "none" or not rest or runner.policy.action(broke.kind) == "fail":
                error = _interrupted(runner, attempt, broke, delivered)
                await runner.ledger.commit(call, "call_failed")
                raise error from error.__cause__
            switch, chunk = await _rescue(runner, attempt, broke, rest, delivered)
            restarts += 1
            yield switch
        model_id = runner.attempt_succeeded(
            call,
            skipped=_skipped(attempt),
            tokens=tokens_of(getattr(attempt.chunks, "usage", None)),
        )
        outcome = runner.ledger.succeeded(call, model_id, None)
        finished = StreamOutcome(
            model_id=model_id,
            call_id=call.call_id,
            attempts=outcome.attempts,
            failovers=outcome.failovers,
            latency=outcome.latency,
            restarts=restarts,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            cost=outcome.cost,
            **stream_meta(attempt.chunks),
        )
        await runner.ledger.commit(call, "call_succeeded")
        holder.outcome = finished  # a caller cancelled during the commit never sees it
    finally:
        await close_chunks(attempt.chunks)
        if not call.ended:
            runner.ledger.cancelled(call)


def _skipped(attempt: StreamAttempt) -> int:
    """How many malformed events the client's stream says it skipped."""
    skipped = getattr(attempt.chunks, "skipped", 0)
    return skipped if isinstance(skipped, int) and not isinstance(skipped, bool) else 0


def _rest_of(order: tuple[str, ...], model_id: str | None) -> tuple[str, ...]:
    """The clients after ``model_id`` in the call's order (a client is visited once)."""
    return order[order.index(model_id) + 1 :] if model_id in order else ()


async def _rescue(
    runner: CallRunner,
    attempt: StreamAttempt,
    broke: Failure,
    rest: tuple[str, ...],
    delivered: _Delivered,
) -> tuple[StreamSwitch, str | End]:
    """Go on from the next client that can: the switch to yield and its first chunk.
    Raises ``StreamInterruptedError`` (recorded) when none can."""
    call = attempt.call
    from_model = call.model_id or ""
    _record_break(runner, attempt, broke, delivered, ":")
    await close_chunks(attempt.chunks)
    attempt.chunks = None
    attempt.prefill = "".join(delivered.text) if delivered.keep else None
    call.deadline = max(call.deadline, runner.clock() + call.budget)
    logger.warning(
        "stream from {} broke after {} char(s); going on from the next client ({})",
        from_model,
        delivered.chars,
        "continue" if delivered.keep else "restart",
        call_id=call.call_id,
        model_id=from_model,
    )
    gave_up = GaveUp(broke.kind, broke.message, None, broke.error)
    try:
        chunk: str | End = await runner.run(
            call, rest, attempt.first_chunk, gave_up, exhausted=INTERRUPTED
        )
    except ModelError as exc:
        await runner.ledger.commit(call, "call_failed")
        error = StreamInterruptedError(
            f"stream broke after {delivered.chunks} chunk(s), {delivered.chars} char(s) "
            f"delivered, and no other client could finish it: {exc.message}",
            kind=exc.kind,
            model_id=from_model,
            call_id=call.call_id,
            chunks=delivered.chunks,
            chars=delivered.chars,
        )
        raise error from exc
    mode: Literal["restart", "continue"] = "continue" if attempt.continued else "restart"
    switch = StreamSwitch(
        from_model=from_model,
        to_model=call.model_id or "",
        mode=mode,
        reason=broke.kind,
        discarded_chunks=0 if attempt.continued else delivered.chunks,
        discarded_chars=0 if attempt.continued else delivered.chars,
    )
    if not attempt.continued:
        delivered.chunks = delivered.chars = 0
        delivered.text.clear()
    return switch, chunk


def _record_break(
    runner: CallRunner, attempt: StreamAttempt, broke: Failure, delivered: _Delivered, how: str
) -> None:
    """Record a failure after the first chunk as the client's final failure (it counts)."""
    call = attempt.call
    model_id = call.model_id or ""
    broke.message = (
        f"stream from {model_id} broke after {delivered.chunks} chunk(s), "
        f"{delivered.chars} char(s) delivered{how} {broke.message}"
    )
    broke.usage = getattr(attempt.chunks, "usage", None)  # what it had reported so far
    runner.ledger.attempt_failed(
        call, model_id, broke, True, skipped=_skipped(attempt), chunks=delivered.chunks
    )
    runner.monitor.gave_up_on(model_id, broke.kind, broke.message)


def _interrupted(
    runner: CallRunner,
    attempt: StreamAttempt,
    broke: Failure,
    delivered: _Delivered,
) -> StreamInterruptedError:
    """Record a stream that broke after delivering text, not to be finished elsewhere; the
    error to raise."""
    call = attempt.call
    model_id = call.model_id or ""
    kind = broke.kind
    _record_break(runner, attempt, broke, delivered, "; not failed over:")
    runner.ledger.record_failed(call, INTERRUPTED, kind)
    logger.warning(
        "stream from {} broke after {} char(s); not failing over mid-answer",
        model_id,
        delivered.chars,
        call_id=call.call_id,
        model_id=model_id,
        error_kind=kind.value,
    )
    error = StreamInterruptedError(
        broke.message,
        kind=kind,
        model_id=model_id,
        call_id=call.call_id,
        chunks=delivered.chunks,
        chars=delivered.chars,
    )
    error.__cause__ = broke.error
    return error


__all__ = [
    "INTERRUPTED",
    "FailoverStream",
    "StreamInterruptedError",
    "StreamOutcome",
    "StreamSwitch",
    "check_recovery",
    "stream_with_failover",
]
