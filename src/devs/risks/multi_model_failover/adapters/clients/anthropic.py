"""The Anthropic Messages wire protocol (``POST {base_url}/v1/messages``).

Authenticated by ``x-api-key`` with an ``anthropic-version`` header. System messages of a chat
prompt move to the top-level ``system`` field, as the protocol wants. ``health_check`` is
``GET {base_url}/v1/models``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar, Final

import httpx
import msgspec

from ...core.responses import ModelResponse, Usage
from .base import HTTPModelClient, Prompt, chat_messages
from .errors import ProviderError, error_from_stream
from .sse import ServerSentEvent

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
API_VERSION: Final = "2023-06-01"
# The protocol requires max_tokens; ``params: {max_tokens: ...}`` overrides this.
DEFAULT_MAX_TOKENS: Final = 1024
_REFUSAL: Final = "refusal"


class _Block(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Message(msgspec.Struct):
    content: list[_Block]
    id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _StreamEvent(msgspec.Struct):
    type: str = ""
    delta: _Delta | None = None
    error: _Error | None = None


def split_system(prompt: Prompt) -> tuple[list[dict[str, Any]], str | None]:
    """The chat messages without system ones, and the system text (None when there is none)."""
    messages = chat_messages(prompt)
    system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    return rest, "\n\n".join(system) if system else None


class AnthropicClient(HTTPModelClient):
    """A model behind the Anthropic Messages API.

    ``params`` are merged into every request body (``max_tokens`` defaults to 1024);
    ``model``, ``messages`` and ``stream`` are always this client's own.
    """

    provider: ClassVar[str] = "anthropic"
    chat_path: ClassVar[str] = "/v1/messages"
    models_path: ClassVar[str] = "/v1/models"

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _body(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        messages, system = split_system(prompt)
        body: dict[str, Any] = {
            "max_tokens": DEFAULT_MAX_TOKENS,
            **self.params,
            "model": self.model,
            "messages": messages,
            "stream": stream,
        }
        if system is not None:
            body["system"] = system
        return body

    def _parse(self, response: httpx.Response, latency: float) -> ModelResponse:
        data = self._decode(response.content, _Message, "message")
        if data.stop_reason == _REFUSAL:
            raise self._refused("the model declined to answer (stop_reason=refusal)")
        usage = data.usage or _Usage()
        return ModelResponse(
            text="".join(b.text for b in data.content if b.type == "text" and b.text),
            model=data.model or self.model,
            finish_reason=data.stop_reason,
            usage=Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
            request_id=response.headers.get("request-id") or data.id,
            latency=latency,
        )

    async def _texts(self, events: AsyncIterator[ServerSentEvent]) -> AsyncGenerator[str, None]:
        async for event in events:
            data = self._decode(event.data, _StreamEvent, "stream event")
            kind = data.type or event.event
            if kind == "error":
                error = data.error or _Error()
                raise error_from_stream(
                    ProviderError(type=error.type, message=error.message), model_id=self.model_id
                )
            delta = data.delta
            if kind == "content_block_delta" and delta and delta.type == "text_delta":
                if delta.text:
                    yield delta.text
            elif kind == "message_delta" and delta and delta.stop_reason == _REFUSAL:
                raise self._refused("the model declined to go on (stop_reason=refusal)")
            elif kind == "message_stop":
                return
        raise self._incomplete()
