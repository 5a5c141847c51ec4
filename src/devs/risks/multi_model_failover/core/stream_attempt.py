"""One stream's attempts: opening a client's stream, its first chunk, the chunks after it.

The first chunk is bounded like a call's attempt (by ``first_token_timeout`` and the call's
deadline); each chunk after it by ``idle_timeout``: a stream that stays open and sends nothing
has stalled, and fails as a ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import anyio
from loguru import logger

from .calls import (
    Call,
    Failure,
    failure,
    foreign_cancel_failure,
    no_params_failure,
    timed_out,
)
from .errors import ErrorKind, ModelError
from .registry import RegisteredClient
from .responses import ToolCall, Usage
from .runner import CallRunner


class End:
    """The stream ended (a sentinel: ``None`` could be a chunk of a careless client)."""


END: Final = End()
_META: Final = ("model", "finish_reason", "request_id")


def _text_of(response: Any) -> str:
    if isinstance(response, str):
        return response
    text = getattr(response, "text", None)
    return text if isinstance(text, str) else str(response)


class _WholeAnswer:
    """A client that cannot stream answers in one chunk; its answer's usage, finish reason,
    model and request id (when it has them) are the stream's."""

    def __init__(
        self, client: RegisteredClient, prompt: Any, params: Mapping[str, Any] | None
    ) -> None:
        self._client = client
        self._prompt = prompt
        self._params = params
        self._done = False
        self.response: Any = None

    def __aiter__(self) -> _WholeAnswer:
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        self._done = True
        self.response = await self._client.call(self._prompt, self._params)
        text = _text_of(self.response)
        if not text:
            raise StopAsyncIteration
        return text

    def __getattr__(self, name: str) -> Any:
        if name in (*_META, "usage", "tool_calls"):
            return getattr(self.__dict__.get("response"), name, None)
        raise AttributeError(name)


async def _open(
    client: RegisteredClient, prompt: Any, params: Mapping[str, Any] | None
) -> AsyncIterator[str]:
    stream = getattr(client.client, "stream", None)
    if not callable(stream):
        return _WholeAnswer(client, prompt, params)
    chunks = stream(prompt) if params is None else stream(prompt, params=params)
    if not hasattr(chunks, "__anext__"):
        chunks = await chunks
    return chunks  # type: ignore[no-any-return]


def _takes_params(client: RegisteredClient) -> bool:
    """Whether the method a stream opens with (``stream``, else ``call``) takes params."""
    if callable(getattr(client.client, "stream", None)):
        return client.stream_takes_params
    return client.call_takes_params


async def _next(chunks: AsyncIterator[str]) -> str | End:
    try:
        chunk = await chunks.__anext__()
    except StopAsyncIteration:
        return END
    if not isinstance(chunk, str):
        raise TypeError(f"the client's stream yielded {type(chunk).__name__}, not text")
    return chunk


async def close_chunks(chunks: AsyncIterator[str] | None) -> None:
    """Close a client's stream (shielded: it runs on the way out of a cancellation too)."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


def stream_meta(chunks: object) -> dict[str, Any]:
    """What a finished client stream reports about itself: ``model``, ``finish_reason``,
    ``request_id`` (text), ``usage`` (a ``Usage``); None for what it does not; and the
    ``tool_calls`` it assembled (``ToolCall``s; none when it has none)."""
    meta: dict[str, Any] = {}
    for name in _META:
        value = getattr(chunks, name, None)
        meta[name] = value if isinstance(value, str) else None
    usage = getattr(chunks, "usage", None)
    meta["usage"] = usage if isinstance(usage, Usage) else None
    calls = getattr(chunks, "tool_calls", None)
    ok = isinstance(calls, tuple | list) and all(isinstance(c, ToolCall) for c in calls)
    meta["tool_calls"] = tuple(calls) if ok and calls else ()
    return meta


def with_prefill(prompt: Any, text: str) -> list[dict[str, Any]]:
    """The chat messages of ``prompt`` and a final assistant message holding ``text``."""
    messages: list[dict[str, Any]] = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else [dict(m) for m in prompt if isinstance(m, Mapping)]
    )
    return [*messages, {"role": "assistant", "content": text}]


class StreamAttempt:
    """The client stream a call is reading, and how the next one is opened."""

    def __init__(self, runner: CallRunner, call: Call) -> None:
        self.runner = runner
        self.call = call
        self.chunks: AsyncIterator[str] | None = None
        # Set for a continuation: the text so far, sent as an assistant prefill.
        self.prefill: str | None = None
        self.continued = False  # the last stream opened continues the text (prefill)

    async def first_chunk(
        self, client: RegisteredClient, prompt: Any, remaining: float, call: Call
    ) -> str | End | Failure:
        """Open ``client``'s stream and wait for its first chunk (``runner.run``'s attempt).

        For a continuation a client that supports prefill gets the text so far; one that
        refuses it (``bad_request``) is asked again at once without it.
        """
        self.continued = False
        prefill = self.prefill
        if prefill and getattr(client.client, "supports_prefill", False) is True:
            result = await self._first(client, with_prefill(prompt, prefill), remaining, call)
            if not isinstance(result, Failure):
                self.continued = True
                return result
            if result.kind is not ErrorKind.BAD_REQUEST:
                return result
            logger.info(
                "{} refused the prefilled request ({}); starting the answer again there",
                client.model_id,
                result.message,
                call_id=call.call_id,
                model_id=client.model_id,
            )
            remaining = call.deadline - self.runner.clock()
        return await self._first(client, prompt, remaining, call)

    async def _first(
        self, client: RegisteredClient, prompt: Any, remaining: float, call: Call
    ) -> str | End | Failure:
        runner = self.runner
        params = call.params
        if params is not None and not _takes_params(client):
            return no_params_failure(client.model_id, params)
        limit, by_attempt = runner.attempt_limit(remaining, runner.policy.first_token_timeout)
        chunks: AsyncIterator[str] | None = None  # opened here, closed here unless kept
        try:
            with runner.timer.move_on_after(limit) as scope:
                call.cut = scope
                chunks = await _open(client, prompt, params)
                first = await _next(chunks)
                self.chunks, chunks = chunks, None
                return first
            return timed_out(limit, by_attempt, "no first chunk within", call)
        except Exception as exc:  # noqa: BLE001 - any client failure is a failed attempt
            failed = failure(exc, call.prompt)
        except asyncio.CancelledError as exc:
            failed = foreign_cancel_failure(exc, call.prompt)
        finally:
            call.cut = None
            await close_chunks(chunks)
        failed.usage = getattr(chunks, "usage", None)  # what it had reported before it failed
        return failed  # on every way out, cancellation included

    async def next_chunk(self) -> str | End:
        """The next chunk, within ``idle_timeout``; an engine closing meanwhile cuts the wait
        short. A stall raises ``ModelError(kind=timeout)``."""
        assert self.chunks is not None  # noqa: S101 - only after first_chunk succeeded
        call = self.call
        idle = self.runner.policy.idle_timeout
        chunk: str | End = END
        scope = anyio.CancelScope() if idle is None else self.runner.timer.move_on_after(idle)
        with scope as waiting:
            call.cut = waiting
            chunk = await _next(self.chunks)
        call.cut = None
        if call.closed:
            raise self.runner.ledger.closed_during(call)
        if waiting.cancelled_caught:
            raise ModelError(
                f"no chunk within idle_timeout ({idle:g}s): the stream stalled",
                kind=ErrorKind.TIMEOUT,
                model_id=call.model_id,
            )
        return chunk
