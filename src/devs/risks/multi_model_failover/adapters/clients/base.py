"""What the HTTP model clients share: one pooled ``httpx.AsyncClient``, timeouts, errors.

No automatic retries happen here: the engine owns retrying, and a client that retried on its
own would multiply the engine's attempts and hide failures from the event log.

====================  ========================================================================
``call``              one request; a ``ModelResponse`` (``finish_reason`` normalised,
                      ``tool_calls`` parsed)
``stream``            a ``TextStream`` of text chunks; once it ended, its ``usage``,
                      ``finish_reason``, ``model``, ``request_id``, ``tool_calls`` and
                      ``skipped`` say how it went
``health_check``      ``probe="request"`` (default): POST one real request for one
                      token; ``probe="models"``: ``GET {models}``. True, or the ``ModelError``
                      saying why
``supports_prefill``  whether a final assistant message is continued (the engine's
                      ``stream(..., recovery="continue")`` hands it the text so far)
====================  ========================================================================

Both take ``params``, options for this one request in the OpenAI shape (``temperature``,
``max_tokens``, ``stop``, ``seed``, ``tools``, ``tool_choice``, ``response_format``...),
merged over the client's configured ``params`` for that call only (see ``options``). Each
protocol checks and translates them before anything is sent: an option it cannot express is
a ``ModelError(kind=bad_request)`` naming it, never silently dropped, and so is a value that
cannot be written as JSON (a ``numpy.float32``...: the body is encoded while the request is
built). The configured ``params`` are checked the same way when the client is built
(``ValueError``).

``finish_reason`` is one of ``stop``, ``length``, ``tool_calls``, ``content_filter`` for the
reasons both protocols know (Anthropic's ``end_turn`` and ``stop_sequence`` are ``stop``,
``max_tokens`` is ``length``, ``tool_use`` is ``tool_calls``, ``refusal`` is
``content_filter``; OpenAI's legacy ``function_call`` is ``tool_calls``); any other value is
kept as the provider gave it.
"""

from __future__ import annotations

import contextlib
import functools
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, NamedTuple, Self, TypeVar

import anyio
import httpx
import msgspec
from loguru import logger

from ...core.errors import ErrorKind, ModelError
from ...core.protocols import Params, Prompt
from ...core.responses import ChunkStream, ModelResponse, ToolCall, Usage
from ...core.scrub import register_secret, scrub
from .errors import (
    BODY_LIMIT,
    MALFORMED_IN_A_ROW,
    error_from_response,
    error_from_transport,
    malformed,
)
from .options import bad_request, merge_params
from .sse import ServerSentEvent, iter_events

T = TypeVar("T")
WallClock = Callable[[], datetime]
Probe = Literal["request", "models"]
PROBES: Final[tuple[Probe, ...]] = ("request", "models")
PROBE_PROMPT: Final = "ping"

DEFAULT_HEALTH_TIMEOUT: Final = 5.0
# How long the end of a completed stream's body may take to arrive (it is normally there).
_DRAIN_GRACE: Final = 1.0
_SENSITIVE_HEADER: Final = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)
_JSON: Final = {"content-type": "application/json", "accept": "application/json"}
_EVENT_STREAM: Final = {"content-type": "application/json", "accept": "text/event-stream"}
_encoder: Final = msgspec.json.Encoder()
_FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "function_call": "tool_calls",
}


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one reads the CA bundle (~50 ms)."""
    return httpx.create_ssl_context()


def utc_now() -> datetime:
    """Now, timezone-aware UTC (to read ``Retry-After`` dates)."""
    return datetime.now(UTC)


def chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """A prompt as chat messages: a ``str`` becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence):
        messages = [dict(m) for m in prompt if isinstance(m, Mapping)]
        if len(messages) == len(prompt):
            return messages
    raise TypeError(
        f"prompt must be a str or a list of chat messages (dicts), got {type(prompt).__name__}"
    )


def normalise_finish_reason(reason: str | None) -> str | None:
    """``stop``, ``length``, ``tool_calls`` or ``content_filter`` for the reasons both
    protocols know; anything else as given."""
    if reason is None:
        return None
    return _FINISH_REASONS.get(reason, reason)


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The provider's id of a request, from ``x-request-id`` (OpenAI) or ``request-id``."""
    return headers.get("x-request-id") or headers.get("request-id") or None


class WireRequest(NamedTuple):
    """A request body as the protocol wants it, and how to read its answer."""

    body: dict[str, Any]
    # The tool whose input is the answer's text (Anthropic's tool-based structured output):
    # its call is the answer, not a tool call for the caller.
    answer_tool: str | None = None


# What msgspec raises for a value it cannot write as JSON (RecursionError: a value that
# holds itself).
_UNSENDABLE: Final = (TypeError, msgspec.EncodeError, RecursionError)


def encode_body(body: Mapping[str, Any], *, model_id: str | None = None) -> bytes:
    """``body`` as JSON bytes; ``ModelError(kind=bad_request)`` naming the key whose value
    cannot be written as JSON (a ``numpy.float32``, a set, an object...).

    Encoding happens while the request is built, before anything is sent: a value no server
    could be sent is the caller's mistake, not a failure of the model (which the engine would
    retry and hold against the model's health).
    """
    try:
        return _encoder.encode(body)
    except _UNSENDABLE as exc:
        named = [
            "the prompt (messages)" if key == "messages" else f"params {key}"
            for key, value in body.items()
            if not _sendable(value)
        ]
        raise bad_request(
            f"{', '.join(named) or 'the request'}: cannot be sent as JSON ({exc})",
            model_id=model_id,
        ) from exc


def _sendable(value: object) -> bool:
    try:
        _encoder.encode(value)
    except _UNSENDABLE:
        return False
    return True


def _trim_lead(text: str, pending: str) -> tuple[str, str]:
    """``text`` without the start it shares with ``pending``, and what is still pending."""
    shared = 0
    while shared < min(len(text), len(pending)) and text[shared] == pending[shared]:
        shared += 1
    return text[shared:], (pending[shared:] if shared == len(text) else "")


class TextStream(ChunkStream[str]):
    """An answer arriving as text chunks: an async iterator of ``str``.

    Close it early with ``aclose()`` (or ``contextlib.aclosing``, or ``async with``): that
    releases the connection. Iterating raises ``ModelError``: before the first chunk or between
    chunks, and at the end when the answer came without the protocol's end marker (``server``).

    What the provider said about the answer fills in as it arrives and is complete once the
    stream ended: ``usage`` (``Usage`` or None), ``finish_reason`` (normalised), ``model`` (as
    served), ``request_id`` (from the ``x-request-id``/``request-id`` header, else the body's
    id), ``tool_calls`` (the ``ToolCall``s the model asked for, assembled from their pieces;
    set when the stream ended) and ``skipped``, how many malformed events were skipped (each
    logged at WARNING, without its text; more than ``MALFORMED_IN_A_ROW`` in a row fail the
    stream, ``server``).
    """

    def __init__(
        self, model_id: str, open_: Callable[[TextStream], AsyncGenerator[str, None]]
    ) -> None:
        self.model_id = model_id
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.tool_calls: tuple[ToolCall, ...] = ()
        self.skipped = 0
        self.decoded = 0  # well-formed events
        self._malformed_run = 0
        self._chunks = open_(self)

    def __repr__(self) -> str:
        return (
            f"TextStream(model_id={self.model_id!r}, model={self.model!r}, "
            f"finish_reason={self.finish_reason!r}, skipped={self.skipped})"
        )

    def _decoded(self) -> None:
        self.decoded += 1
        self._malformed_run = 0

    def _skip(self, problem: str) -> None:
        """Count one malformed event; ``ModelError`` (``server``) when too many came in a row."""
        self.skipped += 1
        self._malformed_run += 1
        logger.warning(
            "skipped a malformed stream event from {} ({}; {} in a row)",
            self.model_id,
            problem,
            self._malformed_run,
            model_id=self.model_id,
            skipped=self.skipped,
        )
        if self._malformed_run > MALFORMED_IN_A_ROW:
            raise malformed(
                f"{self._malformed_run} malformed stream events in a row", model_id=self.model_id
            )


async def _read_limited(raw: AsyncIterator[bytes]) -> bytes:
    body = b""
    async for chunk in raw:
        body += chunk
        if len(body) >= BODY_LIMIT:
            break
    return body


async def _unwind(raw: AsyncIterator[bytes], grace: float) -> None:
    """Finish reading a response body, or abandon it, and finish httpx's own generators.

    httpx reads a body through nested async generators that close nothing beneath them, so a
    body left half-read leaves them to the garbage collector (Trio warns about each). After a
    complete answer the end of the body is read for up to ``grace`` seconds, which leaves the
    connection for reuse. Otherwise (``grace=0``) the first read that would wait is cancelled:
    the cancellation unwinds every generator down to the connection, which httpcore closes.
    """
    with anyio.move_on_after(grace), contextlib.suppress(httpx.HTTPError):
        async for _ in raw:
            pass


class HTTPModelClient:
    """A model behind an HTTP API; subclasses speak one wire protocol.

    ``timeout`` bounds one ``call`` end to end and each read of a stream (seconds);
    ``health_timeout`` bounds ``health_check``, whose ``probe`` is ``"request"`` (one real
    request for one token) or ``"models"`` (``GET {models}``). ``prefill`` (default: the
    protocol's own, ``default_prefill``) sets ``supports_prefill``. ``params`` are options
    sent with every request (see the module's docstring); ``ValueError`` names one the
    protocol cannot express or JSON cannot hold. The key is only sent, never shown: ``repr``
    leaves it out and it is registered with the scrubber, so no message can carry it.
    """

    provider: ClassVar[str] = "http"
    chat_path: ClassVar[str] = ""
    models_path: ClassVar[str] = ""
    default_prefill: ClassVar[bool] = False

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str | None = None,
        model_id: str | None = None,
        timeout: float = 30.0,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        wall_clock: WallClock | None = None,
        probe: Probe = "request",
        prefill: bool | None = None,
    ) -> None:
        if probe not in PROBES:
            raise ValueError(f"probe must be 'request' or 'models', got {probe!r}")
        self.model = model
        self.model_id = model_id or model
        self.params = dict(params or {})
        try:
            self.check_params(self.params, model_id=self.model_id)
            encode_body(self.params, model_id=self.model_id)
        except ModelError as exc:
            raise ValueError(f"{self.model_id}: {exc.message}") from None
        register_secret(api_key)
        extra = dict(headers or {})
        for name, value in extra.items():
            if _SENSITIVE_HEADER.search(name):
                register_secret(value)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.health_timeout = min(health_timeout, timeout)
        self.probe: Probe = probe
        self.supports_prefill = self.default_prefill if prefill is None else bool(prefill)
        self._wall_clock = wall_clock or utc_now
        self._http = httpx.AsyncClient(
            headers={**self._auth_headers(api_key), **extra},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            verify=_tls_context(),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_id={self.model_id!r}, model={self.model!r}, "
            f"base_url={scrub(self.base_url)!r})"
        )

    # -- the wire protocol, per subclass ----------------------------------------------

    @classmethod
    def check_params(cls, params: Params, *, model_id: str | None = None) -> None:
        """Raise ``ModelError(kind=bad_request)`` naming an option of ``params`` this protocol
        cannot express or a malformed one; ``model_id`` goes into the error."""
        raise NotImplementedError

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def _request(self, prompt: Prompt, params: dict[str, Any], *, stream: bool) -> WireRequest:
        """The request for ``prompt`` with ``params`` (merged, not yet checked); raises
        ``ModelError(kind=bad_request)`` for an option the protocol cannot express."""
        raise NotImplementedError

    def _probe_body(self) -> dict[str, Any]:
        """The smallest real request: ``PROBE_PROMPT``, one token, not streamed."""
        raise NotImplementedError

    def _parse(
        self, response: httpx.Response, latency: float, request: WireRequest
    ) -> ModelResponse:
        raise NotImplementedError

    def _accept_probe(self, response: httpx.Response) -> None:
        """Raise ``ModelError`` unless the body is the protocol's answer (refusals are fine)."""
        raise NotImplementedError

    def _texts(
        self, events: AsyncIterator[ServerSentEvent], out: TextStream, request: WireRequest
    ) -> AsyncGenerator[str, None]:
        """The text of ``events``; fills ``out``'s attributes as the events say them."""
        raise NotImplementedError

    def _prefill_space(self, prompt: Prompt) -> str:
        """Whitespace cut from the end of a final assistant message before it was sent."""
        return ""

    # -- ModelClient ------------------------------------------------------------------

    async def call(self, prompt: Prompt, params: Params | None = None) -> ModelResponse:
        """Answer ``prompt`` with ``params`` (options for this call, over the configured ones);
        raises ``ModelError`` with the kind of failure (never retries): ``bad_request`` before
        anything is sent for an option the protocol cannot express or JSON cannot hold."""
        request = self._request(prompt, self._merged(params), stream=False)
        content = encode_body(request.body, model_id=self.model_id)
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                response = await self._http.post(
                    self._url(self.chat_path), content=content, headers=_JSON
                )
        except TimeoutError:
            raise self._timed_out(self.timeout) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, model_id=self.model_id) from None
        self._check(response, response.content)
        return self._parse(response, time.perf_counter() - started, request)

    async def health_check(self) -> bool:
        """True when the model answers a probe; raises ``ModelError`` saying why when not.

        ``probe="request"``: POST the chat path for one token (``PROBE_PROMPT``, not streamed,
        the client's other ``params`` kept), healthy on any success answer of the protocol's
        shape, even an empty or refused one. ``probe="models"``: ``GET {models}``, which some
        providers answer while their model cannot serve.
        """
        try:
            with anyio.fail_after(self.health_timeout):
                if self.probe == "models":
                    response = await self._http.get(
                        self._url(self.models_path), timeout=self.health_timeout
                    )
                else:
                    response = await self._http.post(
                        self._url(self.chat_path),
                        content=encode_body(self._probe_body(), model_id=self.model_id),
                        headers=_JSON,
                        timeout=self.health_timeout,
                    )
        except TimeoutError:
            raise self._timed_out(self.health_timeout) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, model_id=self.model_id) from None
        self._check(response, response.content)
        if self.probe == "request":
            self._accept_probe(response)
        return True

    def stream(self, prompt: Prompt, params: Params | None = None) -> TextStream:
        """Answer ``prompt`` with ``params`` as text chunks (server-sent events); see
        ``TextStream``.

        The request is built, checked and encoded at once (``ModelError(kind=bad_request)``
        here for an option the protocol cannot express or JSON cannot hold), but nothing is
        sent until the first chunk is asked for. Raises ``ModelError`` before the first chunk
        or between chunks; a stream that ends without the protocol's end marker is a
        ``server`` error, never a silent short answer.
        """
        request = self._request(prompt, self._merged(params), stream=True)
        content = encode_body(request.body, model_id=self.model_id)
        # What the API made us cut from a prefilled answer; the continuation may repeat it.
        pending = self._prefill_space(prompt)
        return TextStream(self.model_id, lambda out: self._stream(request, content, pending, out))

    async def _stream(
        self, request: WireRequest, content: bytes, pending: str, out: TextStream
    ) -> AsyncGenerator[str, None]:
        try:
            async with self._http.stream(
                "POST", self._url(self.chat_path), content=content, headers=_EVENT_STREAM
            ) as response:
                raw = response.aiter_bytes()
                grace = 0.0
                try:
                    if not response.is_success:
                        self._check(response, await _read_limited(raw))
                    out.request_id = request_id_of(response.headers)
                    async with (
                        contextlib.aclosing(iter_events(raw)) as events,
                        contextlib.aclosing(self._texts(events, out, request)) as texts,
                    ):
                        async for text in texts:
                            shown = text
                            if pending:
                                shown, pending = _trim_lead(text, pending)
                            if shown:
                                yield shown
                    grace = min(_DRAIN_GRACE, self.timeout)
                finally:
                    await _unwind(raw, grace)
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, model_id=self.model_id) from None

    # -- lifecycle --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has run (a closed client cannot call)."""
        return self._http.is_closed

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- helpers ----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _merged(self, params: Params | None) -> dict[str, Any]:
        return merge_params(self.params, params, model_id=self.model_id)

    def _timed_out(self, seconds: float) -> ModelError:
        return ModelError(
            f"no answer within {seconds:g}s", kind=ErrorKind.TIMEOUT, model_id=self.model_id
        )

    def _check(self, response: httpx.Response, body: bytes) -> None:
        if response.is_success:
            return
        raise error_from_response(
            response.status_code,
            response.headers,
            body,
            now=self._wall_clock(),
            model_id=self.model_id,
        )

    def _decode(self, data: bytes | str, type_: type[T], what: str) -> T:
        try:
            return msgspec.json.decode(data, type=type_)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise malformed(f"malformed {what}", exc, model_id=self.model_id) from None

    def _event(self, data: str, type_: type[T], out: TextStream) -> T | None:
        """One stream event's data as ``type_``; None (counted on ``out``) when malformed."""
        try:
            decoded = msgspec.json.decode(data, type=type_)
        except msgspec.ValidationError:
            out._skip("JSON of an unexpected shape")
            return None
        except msgspec.DecodeError:
            out._skip("not valid JSON")
            return None
        out._decoded()
        return decoded

    def _refused(self, reason: str, usage: Usage | None = None) -> ModelError:
        """A refusal; ``usage``: what the provider reported (and billed) for it."""
        return ModelError(
            reason, kind=ErrorKind.CONTENT_FILTER, model_id=self.model_id, usage=usage
        )

    def _incomplete(self) -> ModelError:
        return malformed("the stream ended before it was complete", model_id=self.model_id)
