"""The Anthropic Messages wire protocol (``POST {base_url}/v1/messages``).

Authenticated by ``x-api-key`` with an ``anthropic-version`` header. System messages of a chat
prompt move to the top-level ``system`` field, as the protocol wants. A final assistant message
is a prefill the model continues; the API refuses one ending in whitespace, so that is cut
(and, in a stream, cut from the start of the continuation too if it repeats it).
``health_check`` posts one real request for one token (``probe="models"``:
``GET {base_url}/v1/models``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, ClassVar, Final

import httpx
import msgspec

from ...core.responses import ModelResponse, Usage
from .base import (
    PROBE_PROMPT,
    HTTPModelClient,
    Prompt,
    TextStream,
    chat_messages,
    normalise_finish_reason,
    request_id_of,
)
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


class _Started(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None


class _StreamEvent(msgspec.Struct):
    type: str = ""
    delta: _Delta | None = None
    error: _Error | None = None
    message: _Started | None = None  # message_start
    usage: _Usage | None = None  # message_delta: the counts so far


def split_system(prompt: Prompt) -> tuple[list[dict[str, Any]], str | None]:
    """The chat messages without system ones, and the system text (None when there is none)."""
    messages = chat_messages(prompt)
    system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    return rest, "\n\n".join(system) if system else None


def strip_prefill(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``messages`` with the trailing whitespace of a final assistant message cut (the API
    refuses it), and what was cut. A final assistant message left empty is dropped."""
    if not messages or messages[-1].get("role") != "assistant":
        return messages, ""
    last = dict(messages[-1])
    content = last.get("content")
    if isinstance(content, str):
        text = content
        last["content"] = kept = text.rstrip()
    elif isinstance(content, list) and content and _is_text(content[-1]):
        text = content[-1]["text"]
        kept = text.rstrip()
        last["content"] = [*content[:-1], {**content[-1], "text": kept}] if kept else content[:-1]
    else:
        return messages, ""
    head = messages[:-1]
    return ([*head, last] if last["content"] else head), text[len(kept) :]


def _is_text(block: object) -> bool:
    return (
        isinstance(block, Mapping)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


class AnthropicClient(HTTPModelClient):
    """A model behind the Anthropic Messages API.

    ``params`` are merged into every request body (``max_tokens`` defaults to 1024);
    ``model``, ``messages`` and ``stream`` are always this client's own. ``supports_prefill``
    is True unless built with ``prefill=False`` (for a model that refuses prefill).
    """

    provider: ClassVar[str] = "anthropic"
    chat_path: ClassVar[str] = "/v1/messages"
    models_path: ClassVar[str] = "/v1/models"
    default_prefill: ClassVar[bool] = True

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _body(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        messages, system = split_system(prompt)
        messages, _ = strip_prefill(messages)
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

    def _probe_body(self) -> dict[str, Any]:
        body = {**self._body(PROBE_PROMPT, stream=False), "max_tokens": 1}
        # Extended thinking needs max_tokens above its budget (at least 1024): no probe could
        # pass with it, so the probe goes without.
        body.pop("thinking", None)
        return body

    def _accept_probe(self, response: httpx.Response) -> None:
        self._decode(response.content, _Message, "message")

    def _prefill_space(self, prompt: Prompt) -> str:
        if isinstance(prompt, str) or not prompt or prompt[-1].get("role") != "assistant":
            return ""  # no prefill: the usual case, without building the messages again
        return strip_prefill(split_system(prompt)[0])[1]

    def _parse(self, response: httpx.Response, latency: float) -> ModelResponse:
        data = self._decode(response.content, _Message, "message")
        if data.stop_reason == _REFUSAL:
            raise self._refused("the model declined to answer (stop_reason=refusal)")
        usage = data.usage or _Usage()
        return ModelResponse(
            text="".join(b.text for b in data.content if b.type == "text" and b.text),
            model=data.model or self.model,
            finish_reason=normalise_finish_reason(data.stop_reason),
            usage=Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens),
            request_id=request_id_of(response.headers) or data.id,
            latency=latency,
        )

    async def _texts(
        self, events: AsyncIterator[ServerSentEvent], out: TextStream
    ) -> AsyncGenerator[str, None]:
        async for event in events:
            data = self._event(event.data, _StreamEvent, out)
            if data is None:
                continue
            kind = data.type or event.event
            if kind == "error":
                error = data.error or _Error()
                raise error_from_stream(
                    ProviderError(type=error.type, message=error.message), model_id=self.model_id
                )
            delta = data.delta
            if kind == "message_start" and data.message is not None:
                out.request_id = out.request_id or data.message.id or None
                out.model = data.message.model or out.model
                _count(out, data.message.usage)
            elif kind == "content_block_delta" and delta and delta.type == "text_delta":
                if delta.text:
                    yield delta.text
            elif kind == "message_delta":
                _count(out, data.usage)
                if delta and delta.stop_reason:
                    out.finish_reason = normalise_finish_reason(delta.stop_reason)
                if delta and delta.stop_reason == _REFUSAL:
                    raise self._refused("the model declined to go on (stop_reason=refusal)")
            elif kind == "message_stop":
                return
        raise self._incomplete()


def _count(out: TextStream, new: _Usage | None) -> None:
    """``out.usage`` with the counts ``new`` gives over it (``message_delta``'s are
    cumulative; each event may give only some of them)."""
    if new is None:
        return
    old = out.usage or Usage()
    out.usage = Usage(
        input_tokens=old.input_tokens if new.input_tokens is None else new.input_tokens,
        output_tokens=old.output_tokens if new.output_tokens is None else new.output_tokens,
    )
