"""The Anthropic Messages wire protocol (``POST {base_url}/v1/messages``).

Authenticated by ``x-api-key`` with an ``anthropic-version`` header. ``health_check`` posts
one real request for one token (``probe="models"``: ``GET {base_url}/v1/models``).

The request comes in the OpenAI shape (chat messages, ``params``): ``anthropic_request`` says
how each part is translated (tools, tool choice, ``stop``, system messages, multi-turn tool
use, ``response_format`` as a forced tool) and what is refused before anything is sent.

A final assistant message is a prefill the model continues; the API refuses one ending in
whitespace, so that is cut (and, in a stream, cut from the start of the continuation too if
it repeats it).

Answers: ``tool_use`` blocks become ``ModelResponse.tool_calls`` (``arguments``: the input
encoded by msgspec); in a stream, ``content_block_start`` (``tool_use``) and its
``input_json_delta`` pieces are assembled into ``TextStream.tool_calls`` (re-encoded by
msgspec, so a call streamed and one answered whole read the same). Some compatible servers
give a tool's whole input in its ``content_block_start`` and no piece: that input is used
when no piece follows. With ``response_format`` the forced tool's input is the text,
streamed as it arrives. ``stop_reason: refusal`` is ``ModelError(kind=content_filter)``
carrying the usage reported for it (``ModelError.usage``: it was billed).

Usage: ``input_tokens`` counts every prompt token: the uncached ones (Anthropic's own
``input_tokens``) plus the cache writes (``cache_creation_input_tokens``) plus the cache reads
(``cache_read_input_tokens``). ``Usage`` has one input count with one price, so a cost
computed from it prices all three at the input price: it overstates cache reads (billed at a
tenth of it) and understates cache writes (billed at 1.25 or 2 times it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, ClassVar, Final

import httpx
import msgspec

from ...core.protocols import Params, Prompt
from ...core.responses import ModelResponse, ToolCall, Usage
from .anthropic_request import (
    DEFAULT_MAX_TOKENS,
    merge_anthropic_params,
    to_anthropic,
    translate_options,
)
from .base import (
    PROBE_PROMPT,
    HTTPModelClient,
    TextStream,
    WireRequest,
    normalise_finish_reason,
    request_id_of,
)
from .errors import ProviderError, error_from_stream
from .options import ToolCallParts, bad_request
from .sse import ServerSentEvent

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicClient",
    "strip_prefill",
]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
API_VERSION: Final = "2023-06-01"
_REFUSAL: Final = "refusal"


class _Block(msgspec.Struct):
    type: str = ""
    text: str | None = None
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: Any = None  # tool_use


class _Usage(msgspec.Struct):
    input_tokens: int | None = None  # the prompt tokens neither written to nor read from a cache
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    content: list[_Block]
    id: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None  # input_json_delta
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
    index: int | None = None  # content_block_*
    content_block: _Block | None = None  # content_block_start
    delta: _Delta | None = None
    error: _Error | None = None
    message: _Started | None = None  # message_start
    usage: _Usage | None = None  # message_delta: the counts so far


# -- prefill ---------------------------------------------------------------------------------


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


# -- the client ---------------------------------------------------------------------------


class AnthropicClient(HTTPModelClient):
    """A model behind the Anthropic Messages API.

    ``params`` (OpenAI-shaped, translated: see the module's table) are merged into every
    request body (``max_tokens`` defaults to 1024); ``model``, ``messages`` and ``stream`` are
    always this client's own (a configured one is ignored, a per-call one refused).
    ``supports_prefill`` is True unless built with ``prefill=False`` (for a model that refuses
    prefill).
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

    @classmethod
    def check_params(cls, params: Params, *, model_id: str | None = None) -> None:
        """See ``translate_options``: the same errors, nothing built."""
        translate_options(params, model_id=model_id)

    def _merged(self, params: Params | None) -> dict[str, Any]:
        # Each source in Anthropic's spelling first: a call's max_tokens must replace a
        # configured max_completion_tokens, not sit beside it as a second spelling.
        return merge_anthropic_params(self.params, params, model_id=self.model_id)

    def _request(self, prompt: Prompt, params: dict[str, Any], *, stream: bool) -> WireRequest:
        messages, system = to_anthropic(prompt, model_id=self.model_id)
        messages, _ = strip_prefill(messages)
        options, answer_tool = translate_options(params, model_id=self.model_id)
        if system is not None:
            if "system" in options:
                raise bad_request(
                    "params system and system messages: give one of them", model_id=self.model_id
                )
            options["system"] = system
        body = {**options, "model": self.model, "messages": messages, "stream": stream}
        return WireRequest(body, answer_tool)

    def _probe_body(self) -> dict[str, Any]:
        body = {**self._request(PROBE_PROMPT, dict(self.params), stream=False).body}
        body["max_tokens"] = 1
        # Extended thinking needs max_tokens above its budget (at least 1024): no probe could
        # pass with it, so the probe goes without.
        body.pop("thinking", None)
        return body

    def _accept_probe(self, response: httpx.Response) -> None:
        self._decode(response.content, _Message, "message")

    def _prefill_space(self, prompt: Prompt) -> str:
        if isinstance(prompt, str) or not prompt or prompt[-1].get("role") != "assistant":
            return ""  # no prefill: the usual case, without building the messages again
        return strip_prefill(to_anthropic(prompt, model_id=self.model_id)[0])[1]

    def _parse(
        self, response: httpx.Response, latency: float, request: WireRequest
    ) -> ModelResponse:
        data = self._decode(response.content, _Message, "message")
        usage = _usage(data.usage or _Usage())
        if data.stop_reason == _REFUSAL:
            # Billed: the error carries the usage the provider reported.
            billed = usage if data.usage is not None else None
            raise self._refused("the model declined to answer (stop_reason=refusal)", billed)
        text = "".join(b.text for b in data.content if b.type == "text" and b.text)
        uses = [b for b in data.content if b.type == "tool_use"]
        finish_reason = normalise_finish_reason(data.stop_reason)
        calls: tuple[ToolCall, ...] = ()
        if request.answer_tool is None:
            calls = tuple(
                ToolCall(id=b.id or f"call_{n}", name=b.name or "", arguments=_json(b.input))
                for n, b in enumerate(uses)
            )
        else:
            answer = next((b for b in uses if b.name == request.answer_tool), None)
            text = _json(answer.input) if answer is not None else text
            finish_reason = _answered(finish_reason)
        return ModelResponse(
            text=text,
            model=data.model or self.model,
            finish_reason=finish_reason,
            usage=usage,
            request_id=request_id_of(response.headers) or data.id,
            latency=latency,
            tool_calls=calls,
        )

    async def _texts(
        self, events: AsyncIterator[ServerSentEvent], out: TextStream, request: WireRequest
    ) -> AsyncGenerator[str, None]:
        blocks = _Blocks(request.answer_tool)
        tally = _Tally(out)
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
            if kind == "message_start" and data.message is not None:
                out.request_id = out.request_id or data.message.id or None
                out.model = data.message.model or out.model
                tally.add(data.message.usage)
            elif kind.startswith("content_block_"):
                text = blocks.read(kind, data)
                if text:
                    yield text
            elif kind == "message_delta":
                self._stopping(data, out, blocks, tally)
            elif kind == "message_stop":
                text = blocks.end()
                if text:
                    yield text
                out.tool_calls = blocks.calls.calls()
                return
        raise self._incomplete()

    def _stopping(
        self, data: _StreamEvent, out: TextStream, blocks: _Blocks, tally: _Tally
    ) -> None:
        """``message_delta``: the counts so far and why the answer stops."""
        tally.add(data.usage)
        stop_reason = data.delta.stop_reason if data.delta else None
        if stop_reason:
            out.finish_reason = blocks.finish_reason(stop_reason)
        if stop_reason == _REFUSAL:
            raise self._refused("the model declined to go on (stop_reason=refusal)", out.usage)


class _Blocks:
    """The content blocks of a stream: their text, and their ``tool_use`` blocks: tool calls,
    assembled, or the answer tool's input (``response_format``), which is the text.

    Anthropic starts a block with an empty ``input`` and sends the input in
    ``input_json_delta`` pieces; some compatible servers give the whole input at the start
    and no piece. A non-empty input at the start is held until the block stops and used then
    if no piece came (a piece means the pieces are the input).
    """

    def __init__(self, answer_tool: str | None) -> None:
        self.answer_tool = answer_tool
        self.calls = ToolCallParts()
        self._answer_at: int | None = None  # the block holding the answer tool's input
        self._answered = False
        self._whole: dict[int, Any] = {}  # inputs given at a block's start, no piece yet

    def read(self, kind: str, data: _StreamEvent) -> str | None:
        """One ``content_block_*`` event; the text it gives."""
        if kind == "content_block_start" and data.content_block is not None:
            self.start(data.index, data.content_block)
            return None
        if kind == "content_block_stop":
            return self.stop(data.index)
        delta = data.delta
        if kind != "content_block_delta" or delta is None:
            return None
        if delta.type == "input_json_delta":
            return self.piece(data.index, delta.partial_json or "")
        return delta.text if delta.type == "text_delta" else None

    def start(self, index: int | None, block: _Block) -> None:
        if block.type != "tool_use":
            return
        at = -1 if index is None else index
        if self.answer_tool is not None and block.name == self.answer_tool:
            self._answer_at = at
        else:
            self.calls.add(at, id=block.id, name=block.name)
        if block.input:
            self._whole[at] = block.input

    def piece(self, index: int | None, partial_json: str) -> str | None:
        """A piece of a tool input; the text to give when it is the answer's."""
        at = -1 if index is None else index
        if partial_json:
            self._whole.pop(at, None)
        if at == self._answer_at:
            self._answered = self._answered or bool(partial_json)
            return partial_json
        self.calls.add(at, arguments=partial_json)
        return None

    def stop(self, index: int | None) -> str | None:
        """``content_block_stop``: a whole input given at the start and in no piece is the
        block's input now; the text to give when it is the answer's."""
        at = -1 if index is None else index
        if at not in self._whole:
            return None
        whole = _json(self._whole.pop(at))
        if at == self._answer_at:
            self._answered = True
            return whole
        self.calls.add(at, arguments=whole)
        return None

    def end(self) -> str | None:
        """``message_stop``: the blocks a server left without ``content_block_stop`` stopped;
        the text still to give (the answer tool's input, "{}" when none came)."""
        text = "".join(filter(None, [self.stop(at) for at in list(self._whole)]))
        if self._answer_at is not None and not self._answered:
            return "{}"  # the answer tool's input came in no piece: it is empty
        return text or None

    def finish_reason(self, stop_reason: str) -> str | None:
        reason = normalise_finish_reason(stop_reason)
        return reason if self.answer_tool is None else _answered(reason)


def _json(value: Any) -> str:
    """A tool input as a JSON string (msgspec's encoding; none is an empty object)."""
    return msgspec.json.encode({} if value is None else value).decode()


def _answered(finish_reason: str | None) -> str | None:
    """The finish reason of an answer given as the forced tool's input: the call is the
    answer, so ``tool_calls`` is ``stop``."""
    return "stop" if finish_reason == "tool_calls" else finish_reason


def _usage(usage: _Usage) -> Usage:
    """The counts as ``Usage``: every prompt token is input, cached or not (see the module's
    docstring for what that does to a cost)."""
    parts = (
        usage.input_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    )
    known = [n for n in parts if n is not None]
    return Usage(input_tokens=sum(known) if known else None, output_tokens=usage.output_tokens)


class _Tally:
    """A stream's usage as its events report it, into ``out.usage``: ``message_start`` gives
    the input counts, each ``message_delta`` the cumulative counts so far, each event perhaps
    only some of them, so every count is kept until an event gives it anew."""

    def __init__(self, out: TextStream) -> None:
        self.out = out
        self.counts = _Usage()

    def add(self, new: _Usage | None) -> None:
        if new is None:
            return
        self.counts = _Usage(
            *(
                old if given is None else given
                for old, given in zip(
                    msgspec.structs.astuple(self.counts),
                    msgspec.structs.astuple(new),
                    strict=True,
                )
            )
        )
        self.out.usage = _usage(self.counts)
