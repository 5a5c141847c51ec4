"""The OpenAI Chat Completions wire protocol (``POST {base_url}/chat/completions``).

Spoken by OpenAI, Azure OpenAI-compatible endpoints, vLLM, Ollama, llama.cpp's server,
OpenRouter and LiteLLM's proxy. ``health_check`` posts one real request for one token
(``probe="models"``: ``GET {base_url}/models``). Streams ask for usage with
``stream_options: {include_usage: true}`` unless ``params`` set ``stream_options``
(``null`` sends none, for servers that refuse the option).

The request shape is this protocol's own, so ``params`` go into the body as they are
(``response_format`` with a JSON schema included: the server enforces it), every key, known
or not; a key whose value is None is left out. ``tools``, ``tool_choice``,
``response_format`` and ``stop`` are checked first (see ``options``), so a malformed one is
a ``bad_request`` before anything is sent rather than a 400 after.

Answers: ``message.tool_calls`` become ``ModelResponse.tool_calls`` (``arguments`` re-encoded
by msgspec, as the Anthropic client does, so the same call reads the same from both; kept as
sent when not valid JSON; a call without an id gets ``call_<n>``); in a stream the
``delta.tool_calls`` fragments are assembled by ``index`` into ``TextStream.tool_calls``.
A refusal (``message.refusal``, or ``delta.refusal`` in a stream, with no text) and
``finish_reason: content_filter`` are ``ModelError(kind=content_filter)``, carrying the usage
the provider reported for them (``ModelError.usage``: it was billed).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar, Final

import httpx
import msgspec

from ...core.protocols import Params, Prompt
from ...core.responses import ModelResponse, ToolCall, Usage
from .base import (
    PROBE_PROMPT,
    HTTPModelClient,
    TextStream,
    WireRequest,
    chat_messages,
    normalise_finish_reason,
    request_id_of,
)
from .errors import ProviderError, error_from_stream, malformed
from .options import (
    ToolCallParts,
    canonical_json,
    check_response_format,
    check_stop,
    check_tool_choice,
    check_tools,
    without_none,
)
from .sse import ServerSentEvent

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
_DONE: Final = "[DONE]"
_FILTERED: Final = "content_filter"
_STREAM_OPTIONS: Final = "stream_options"


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Function(msgspec.Struct):
    name: str | None = None
    # A string of JSON; some compatible servers send the object itself.
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function = msgspec.field(default_factory=_Function)
    index: int | None = None  # stream deltas: which call a fragment belongs to


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _StreamError(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = []
    error: _StreamError | str | None = None
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None


class _Said:
    """What a streamed answer said so far: whether any text, and its refusal's pieces."""

    def __init__(self) -> None:
        self.text = False
        self.refusal: list[str] = []


def _text(content: str | list[_Part] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if part.text)


class OpenAIClient(HTTPModelClient):
    """A model behind an OpenAI-compatible Chat Completions endpoint.

    ``params`` (``temperature``, ``max_tokens``, ``tools``...) are merged into every request
    body; ``model``, ``messages`` and ``stream`` are always this client's own (a configured
    one is ignored, a per-call one refused). ``supports_prefill``
    is False unless built with ``prefill=True``: only some compatible servers continue a final
    assistant message.
    """

    provider: ClassVar[str] = "openai"
    chat_path: ClassVar[str] = "/chat/completions"
    models_path: ClassVar[str] = "/models"

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def _request(self, prompt: Prompt, params: dict[str, Any], *, stream: bool) -> WireRequest:
        # OpenAI refuses stream_options on a request that does not stream; None sends none.
        options = params.pop(_STREAM_OPTIONS, {"include_usage": True})
        params = without_none(params)
        self.check_params(params, model_id=self.model_id)
        body = {
            **params,
            "model": self.model,
            "messages": chat_messages(prompt),
            "stream": stream,
        }
        if stream and options is not None:
            body[_STREAM_OPTIONS] = options
        return WireRequest(body)

    @classmethod
    def check_params(cls, params: Params, *, model_id: str | None = None) -> None:
        """The options this client understands, checked (the server gets them unchanged)."""
        params = without_none(params)
        tools = None
        if "tools" in params:
            tools = check_tools(params["tools"], functions_only=False, model_id=model_id)
        if "tool_choice" in params:
            check_tool_choice(params["tool_choice"], tools, model_id=model_id)
        if "response_format" in params:
            check_response_format(params["response_format"], model_id=model_id)
        if "stop" in params:
            check_stop(params["stop"], model_id=model_id)

    def _probe_body(self) -> dict[str, Any]:
        body = self._request(PROBE_PROMPT, dict(self.params), stream=False).body
        # Reasoning models refuse max_tokens; a client configured for them names the new key.
        if "max_completion_tokens" in body:
            body.pop("max_tokens", None)
            body["max_completion_tokens"] = 1
        else:
            body["max_tokens"] = 1
        return body

    def _accept_probe(self, response: httpx.Response) -> None:
        self._decode(response.content, _Completion, "chat completion")

    def _parse(
        self, response: httpx.Response, latency: float, request: WireRequest
    ) -> ModelResponse:
        data = self._decode(response.content, _Completion, "chat completion")
        if not data.choices:
            raise malformed("chat completion without choices", model_id=self.model_id)
        choice = data.choices[0]
        text = _text(choice.message.content)
        usage = _usage(data.usage or _Usage())
        # A refusal the provider reported usage for was billed: the error carries it.
        billed = usage if data.usage is not None else None
        if choice.finish_reason == _FILTERED:
            raise self._refused(
                "the answer was withheld by a content filter (content_filter)", billed
            )
        if choice.message.refusal and not text:
            raise self._refused(f"the model refused: {choice.message.refusal}", billed)
        return ModelResponse(
            text=text,
            model=data.model or self.model,
            finish_reason=normalise_finish_reason(choice.finish_reason),
            usage=usage,
            request_id=request_id_of(response.headers) or data.id,
            latency=latency,
            tool_calls=_tool_calls(choice.message.tool_calls or ()),
        )

    async def _texts(
        self, events: AsyncIterator[ServerSentEvent], out: TextStream, request: WireRequest
    ) -> AsyncGenerator[str, None]:
        finished = False
        calls = ToolCallParts()
        answer = _Said()
        async for event in events:
            if event.data.strip() == _DONE:
                if out.skipped and not out.decoded:
                    raise malformed(
                        "every event of the stream was malformed", model_id=self.model_id
                    )
                self._check_refusal(answer, out)
                out.tool_calls = calls.calls()
                return
            chunk = self._event(event.data, _Chunk, out)
            if chunk is None:
                continue
            if chunk.error is not None:
                raise error_from_stream(_provider_error(chunk.error), model_id=self.model_id)
            out.request_id = out.request_id or chunk.id or None
            out.model = chunk.model or out.model
            if chunk.usage is not None:  # the include_usage chunk, after the last choice
                out.usage = _usage(chunk.usage)
            for choice in chunk.choices[:1]:
                if choice.delta.content:
                    answer.text = True
                    yield choice.delta.content
                if choice.delta.refusal:
                    answer.refusal.append(choice.delta.refusal)
                for n, part in enumerate(choice.delta.tool_calls or ()):
                    _add_part(calls, part, n)
                if choice.finish_reason is not None:
                    finished = True
                    self._finishing(choice.finish_reason, answer, out)
        # Some servers end with a finish_reason and no [DONE]; without either it was cut.
        if not finished:
            raise self._incomplete()
        out.tool_calls = calls.calls()

    def _finishing(self, finish_reason: str, answer: _Said, out: TextStream) -> None:
        """The choice finished: why, and ``content_filter`` when it was filtered or refused."""
        out.finish_reason = normalise_finish_reason(finish_reason)
        if finish_reason == _FILTERED:
            raise self._refused(
                "the stream was cut by a content filter (content_filter)", out.usage
            )
        self._check_refusal(answer, out)

    def _check_refusal(self, answer: _Said, out: TextStream) -> None:
        """``content_filter`` when the model gave a refusal and no text, as for an answer
        given whole. Raised as soon as the choice finishes: the usage OpenAI sends after the
        finish (``include_usage``) is not waited for, so a streamed refusal is billed only
        when a server reported usage before it."""
        if answer.refusal and not answer.text:
            raise self._refused(f"the model refused: {''.join(answer.refusal)}", out.usage)


def _arguments(value: str | dict[str, Any] | None) -> str:
    """A fragment of arguments as it came (an object, from some servers, as JSON)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _tool_calls(calls: list[_ToolCall] | tuple[()]) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(
            id=call.id or f"call_{n}",
            name=call.function.name or "",
            arguments=canonical_json(_arguments(call.function.arguments)),
        )
        for n, call in enumerate(calls)
    )


def _add_part(calls: ToolCallParts, part: _ToolCall, position: int) -> None:
    """One ``delta.tool_calls`` fragment (a server that sends each call whole may leave out
    ``index``: its position in the list says)."""
    calls.add(
        position if part.index is None else part.index,
        id=part.id,
        name=part.function.name,
        arguments=_arguments(part.function.arguments),
    )


def _usage(usage: _Usage) -> Usage:
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)


def _provider_error(error: _StreamError | str) -> ProviderError:
    if isinstance(error, str):
        return ProviderError(message=error)
    return ProviderError(
        code=str(error.code) if error.code is not None else "",
        type=error.type or "",
        message=error.message or "",
    )
