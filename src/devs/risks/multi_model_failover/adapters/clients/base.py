"""What the HTTP model clients share: one pooled ``httpx.AsyncClient``, timeouts, errors.

No automatic retries happen here: the engine owns retrying, and a client that retried on its
own would multiply the engine's attempts and hide failures from the event log.
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
from typing import Any, ClassVar, Final, Self, TypeVar

import anyio
import httpx
import msgspec

from ...core.errors import ErrorKind, ModelError
from ...core.responses import ModelResponse
from ...core.scrub import register_secret, scrub
from .errors import BODY_LIMIT, error_from_response, error_from_transport, malformed
from .sse import ServerSentEvent, iter_events

T = TypeVar("T")
Prompt = str | Sequence[Mapping[str, Any]]
WallClock = Callable[[], datetime]

DEFAULT_HEALTH_TIMEOUT: Final = 5.0
# How long the end of a completed stream's body may take to arrive (it is normally there).
_DRAIN_GRACE: Final = 1.0
_SENSITIVE_HEADER: Final = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)
_JSON: Final = {"content-type": "application/json", "accept": "application/json"}
_EVENT_STREAM: Final = {"content-type": "application/json", "accept": "text/event-stream"}
_encoder: Final = msgspec.json.Encoder()


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
    ``health_timeout`` bounds ``health_check``. The key is only sent, never shown: ``repr``
    leaves it out and it is registered with the scrubber, so no message can carry it.
    """

    provider: ClassVar[str] = "http"
    chat_path: ClassVar[str] = ""
    models_path: ClassVar[str] = ""

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
    ) -> None:
        register_secret(api_key)
        extra = dict(headers or {})
        for name, value in extra.items():
            if _SENSITIVE_HEADER.search(name):
                register_secret(value)
        self.model = model
        self.model_id = model_id or model
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.health_timeout = min(health_timeout, timeout)
        self.params = dict(params or {})
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

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def _body(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _parse(self, response: httpx.Response, latency: float) -> ModelResponse:
        raise NotImplementedError

    def _texts(self, events: AsyncIterator[ServerSentEvent]) -> AsyncGenerator[str, None]:
        raise NotImplementedError

    # -- ModelClient ------------------------------------------------------------------

    async def call(self, prompt: Prompt) -> ModelResponse:
        """Answer ``prompt``; raises ``ModelError`` with the kind of failure (never retries)."""
        body = self._body(prompt, stream=False)
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                response = await self._http.post(
                    self._url(self.chat_path), content=_encoder.encode(body), headers=_JSON
                )
        except TimeoutError:
            raise self._timed_out(self.timeout) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, model_id=self.model_id) from None
        self._check(response, response.content)
        return self._parse(response, time.perf_counter() - started)

    async def health_check(self) -> bool:
        """True when ``GET {models}`` answers; raises ``ModelError`` saying why when not."""
        try:
            with anyio.fail_after(self.health_timeout):
                response = await self._http.get(
                    self._url(self.models_path), timeout=self.health_timeout
                )
        except TimeoutError:
            raise self._timed_out(self.health_timeout) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, model_id=self.model_id) from None
        self._check(response, response.content)
        return True

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        """Answer ``prompt`` as text chunks (server-sent events).

        Raises ``ModelError`` before the first chunk or between chunks; a stream that ends
        without the protocol's end marker is a ``server`` error, never a silent short answer.
        Close it early with ``contextlib.aclosing``.
        """
        body = self._body(prompt, stream=True)
        try:
            async with self._http.stream(
                "POST",
                self._url(self.chat_path),
                content=_encoder.encode(body),
                headers=_EVENT_STREAM,
            ) as response:
                raw = response.aiter_bytes()
                grace = 0.0
                try:
                    if not response.is_success:
                        self._check(response, await _read_limited(raw))
                    async with (
                        contextlib.aclosing(iter_events(raw)) as events,
                        contextlib.aclosing(self._texts(events)) as texts,
                    ):
                        async for text in texts:
                            yield text
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

    def _refused(self, reason: str) -> ModelError:
        return ModelError(reason, kind=ErrorKind.CONTENT_FILTER, model_id=self.model_id)

    def _incomplete(self) -> ModelError:
        return malformed("the stream ended before it was complete", model_id=self.model_id)
