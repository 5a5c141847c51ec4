"""The request shape of the clients (OpenAI's) on the Anthropic Messages protocol.

Chat messages and ``params`` come in the OpenAI shape (see ``options``) and are translated:

==============================================  ==============================================
OpenAI shape                                    Anthropic wire
==============================================  ==============================================
``system`` (and ``developer``) messages         top-level ``system`` (a string; text blocks
                                                when a message's content is a list)
assistant message with ``tool_calls``           assistant content: its text, then one
                                                ``tool_use`` block per call (``input`` = the
                                                parsed JSON ``arguments``, an object)
``tool`` messages (``tool_call_id``,            one user message of ``tool_result`` blocks
``content``)                                    (consecutive results merged into one turn)
``temperature``, ``top_p``                      the same
``max_tokens`` or ``max_completion_tokens``     ``max_tokens`` (default ``DEFAULT_MAX_TOKENS``:
                                                the protocol requires it)
``stop`` (a string or a list)                   ``stop_sequences`` (a list)
``user``                                        ``metadata.user_id``
``tools`` (function tools)                      ``[{name, description, input_schema}]``
                                                (``parameters``, default ``{"type":
                                                "object"}``; ``strict`` kept)
``tool_choice``: ``auto``, ``required``,        ``{"type": "auto"}``, ``{"type": "any"}``,
``none``, a named function                      ``{"type": "none"}``, ``{"type": "tool",
                                                "name": ...}``
``parallel_tool_calls: false``                  ``tool_choice.disable_parallel_tool_use``
                                                (left out without tools, or with ``none``:
                                                nothing to govern)
``n: 1``                                        nothing (one answer is all there is)
``response_format`` ``text``                    nothing (the default)
``response_format`` ``json_schema``             one forced tool whose ``input_schema`` is the
                                                schema (``strict`` kept); the answer's
                                                ``text`` is that tool's input as JSON,
                                                ``finish_reason`` ``stop``, no ``tool_calls``
``response_format`` ``json_object``             the same with the schema ``{"type":
                                                "object"}`` (the tool ``json_answer``)
==============================================  ==============================================

Anthropic's own options pass as they are: ``top_k``, ``thinking``, ``metadata``,
``stop_sequences``, ``system``, ``service_tier``, ``output_config``, ``container``,
``mcp_servers``, ``context_management`` (``NATIVE_KEYS``). Everything else is refused before
any request is sent, ``ModelError(kind=bad_request)`` naming it: OpenAI options the protocol
cannot express (``seed``, ``logit_bias``, ``logprobs``, ``top_logprobs``, ``n`` above 1,
``presence_penalty``, ``frequency_penalty``, ``reasoning_effort``, ``stream_options``...),
unknown keys, tool types other than ``function``, an option given twice by one source
(``stop`` and ``stop_sequences``, ``user`` and ``metadata.user_id``, ``max_tokens`` and
``max_completion_tokens``; a ``system`` option and system messages), and a
``response_format`` of JSON with ``tools``, ``tool_choice`` or extended ``thinking`` (the
forced answer tool would override the first two, and the API refuses a forced tool while
thinking).

An option spelled either way is one option: each source (the configured ``params``, a call's)
is first spelled the Anthropic way (``native_spelling``), then the call's are merged over the
configured ones (``merge_anthropic_params``). So a call's ``max_tokens`` overrides a configured
``max_completion_tokens``, its ``stop`` a configured ``stop_sequences``, its ``user`` a
configured ``metadata.user_id`` (the rest of the configured ``metadata`` kept); only one
source giving both spellings is refused.

Why structured output goes through a tool: Anthropic's native structured output
(``output_config.format``) exists only on the newest models and not on Anthropic-compatible
servers; elsewhere it is a 400, a ``bad_request`` that fails the whole call without failing
over. A forced tool works on every model with tool use. A client for a model known to have
the native feature can send ``output_config`` itself in its ``params`` (passed as it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ...core.protocols import Prompt
from .base import chat_messages
from .options import (
    OWN_KEYS,
    FunctionTool,
    ResponseFormat,
    bad_request,
    check_response_format,
    check_stop,
    check_tool_choice,
    check_tools,
    merge_params,
    without_none,
)

# The protocol requires max_tokens; ``params: {max_tokens: ...}`` overrides this.
DEFAULT_MAX_TOKENS: Final = 1024
# Anthropic's own request options: passed as they are.
NATIVE_KEYS: Final = frozenset(
    {
        "top_k",
        "thinking",
        "metadata",
        "stop_sequences",
        "system",
        "service_tier",
        "output_config",
        "container",
        "mcp_servers",
        "context_management",
    }
)
# OpenAI options with an Anthropic translation (the table in the module's docstring).
TRANSLATED_KEYS: Final = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "user",
        "n",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
)
_TOOL_CHOICES: Final = {"auto": "auto", "required": "any", "none": "none"}
_SYSTEM_ROLES: Final = ("system", "developer")
JSON_OBJECT_TOOL: Final = "json_answer"
_ANSWER_TOOL_DESCRIPTION: Final = "Give your answer as the input of this tool."


# -- messages -----------------------------------------------------------------------------


def to_anthropic(
    prompt: Prompt, *, model_id: str | None = None
) -> tuple[list[dict[str, Any]], str | list[Any] | None]:
    """The chat messages of ``prompt`` as the Messages protocol wants them, and the system
    prompt (None when there is none); see the module's table."""
    system: list[Any] = []
    messages: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the tool results of the turn being built
    for i, message in enumerate(chat_messages(prompt)):
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.append(message.get("content", ""))
            continue
        if role == "tool":
            block = _tool_result(message, f"messages[{i}]", model_id)
            if results is None:
                results = []
                messages.append({"role": "user", "content": results})
            results.append(block)
            continue
        results = None
        if role == "assistant" and message.get("tool_calls"):
            messages.append(_with_tool_use(message, f"messages[{i}]", model_id))
        else:
            messages.append(message)
    return messages, _system(system)


def _system(parts: list[Any]) -> str | list[Any] | None:
    if not parts:
        return None
    if all(isinstance(part, str) for part in parts):
        return "\n\n".join(parts)
    blocks: list[Any] = []
    for part in parts:
        if isinstance(part, str):
            blocks.append({"type": "text", "text": part})
        elif isinstance(part, list | tuple):
            blocks.extend(part)
        else:
            blocks.append({"type": "text", "text": str(part)})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str, model_id: str | None) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(
            f"{where}.tool_call_id must name the tool call it answers", model_id=model_id
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if content is not None:
        block["content"] = list(content) if isinstance(content, list | tuple) else content
    return block


def _with_tool_use(message: Mapping[str, Any], where: str, model_id: str | None) -> dict[str, Any]:
    """An assistant message with ``tool_calls``: its text, then a ``tool_use`` per call."""
    calls = message["tool_calls"]
    if not isinstance(calls, list | tuple):
        raise bad_request(f"{where}.tool_calls must be a list", model_id=model_id)
    content = message.get("content")
    blocks: list[Any] = []
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    elif isinstance(content, list | tuple):
        blocks.extend(content)
    for j, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]", model_id))
    return {"role": "assistant", "content": blocks}


def _tool_use(call: object, where: str, model_id: str | None) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(call, Mapping) or call.get("type", "function") != "function":
        raise bad_request(f'{where} must be {{"type": "function", ...}}', model_id=model_id)
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.id must be a non-empty string", model_id=model_id)
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.function.name must be a non-empty string", model_id=model_id)
    assert isinstance(function, Mapping)  # noqa: S101 - for mypy: name came from it
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = msgspec.json.decode(arguments)
        except msgspec.DecodeError:
            raise bad_request(
                f"{where}.function.arguments is not valid JSON", model_id=model_id
            ) from None
    if not isinstance(arguments, Mapping):
        raise bad_request(f"{where}.function.arguments must be a JSON object", model_id=model_id)
    return {"type": "tool_use", "id": call_id, "name": name, "input": dict(arguments)}


# -- options ------------------------------------------------------------------------------


def native_spelling(params: Mapping[str, Any], *, model_id: str | None = None) -> dict[str, Any]:
    """``params`` of one source (the configured ones, or one call's) with each option given
    in its OpenAI spelling renamed to Anthropic's: ``max_completion_tokens`` to
    ``max_tokens``, ``stop`` to ``stop_sequences`` (a list), ``user`` to
    ``metadata.user_id``. A new dict; a source giving both spellings of one option (neither
    None) is a ``bad_request`` naming them. A None stays None under the native name (over a
    configured option, it unsets it); a None ``user`` is dropped (``merge_anthropic_params``
    reads it from the call's own ``params``)."""
    out = dict(params)
    _rename(out, "max_completion_tokens", "max_tokens", model_id)
    if out.get("stop") is not None:
        out["stop"] = check_stop(out["stop"], model_id=model_id)
    _rename(out, "stop", "stop_sequences", model_id)
    user = out.pop("user", None)
    if user is not None:
        out["metadata"] = _with_user(user, out.get("metadata"), model_id)
    return out


def _rename(params: dict[str, Any], alias: str, native: str, model_id: str | None) -> None:
    if alias not in params:
        return
    value = params.pop(alias)
    if value is not None and params.get(native) is not None:
        raise bad_request(f"params {alias} and {native}: give one of them", model_id=model_id)
    if value is not None or native not in params:
        params[native] = value


def _with_user(user: object, metadata: object, model_id: str | None) -> dict[str, Any]:
    """``metadata`` with ``user`` as its ``user_id``."""
    if not isinstance(user, str):
        raise bad_request(
            f"params user must be a string, got {type(user).__name__}", model_id=model_id
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise bad_request(
            f"params metadata must be an object, got {type(metadata).__name__}",
            model_id=model_id,
        )
    if metadata and "user_id" in metadata:
        raise bad_request("params user and metadata.user_id: give one of them", model_id=model_id)
    return {**(metadata or {}), "user_id": user}


def merge_anthropic_params(
    configured: Mapping[str, Any], given: Mapping[str, Any] | None, *, model_id: str | None = None
) -> dict[str, Any]:
    """A call's ``given`` options over the ``configured`` ones (``options.merge_params``),
    each source first spelled the Anthropic way (``native_spelling``), so that the call's
    option wins however either spells it. A call's ``user`` (without ``metadata``) replaces
    only the configured ``metadata.user_id``, or removes it when None: the rest of the
    configured ``metadata`` stays."""
    mine = native_spelling(configured, model_id=model_id)
    if not given:
        return mine
    merged = merge_params(mine, native_spelling(given, model_id=model_id), model_id=model_id)
    if "user" in given and "metadata" not in given:
        kept = mine.get("metadata")
        metadata = dict(kept) if isinstance(kept, Mapping) else {}
        metadata.pop("user_id", None)
        if given["user"] is not None:
            metadata["user_id"] = given["user"]
        merged["metadata"] = metadata or None
    return merged


def translate_options(
    params: Mapping[str, Any], *, model_id: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """The request options of ``params`` (OpenAI shape, or already ``native_spelling``) on
    the Messages protocol, and the name of the tool whose input is the answer
    (``response_format``), if any."""
    params = without_none(native_spelling(params, model_id=model_id))
    refused = sorted(params.keys() - NATIVE_KEYS - TRANSLATED_KEYS - OWN_KEYS)
    if refused:
        raise bad_request(
            f"params {', '.join(refused)}: not expressible in the Anthropic Messages protocol",
            model_id=model_id,
        )
    options = {key: params[key] for key in NATIVE_KEYS & params.keys()}
    for key in ("temperature", "top_p"):
        if key in params:
            options[key] = params[key]
    options["max_tokens"] = params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if params.get("n", 1) != 1:
        raise bad_request(
            f"params n={params['n']!r}: the Anthropic protocol gives one answer per request",
            model_id=model_id,
        )
    _tools(params, options, model_id)
    answer_tool = None
    if "response_format" in params:
        answer_tool = _answer_tool(params, options, model_id)
    return options, answer_tool


def _tools(params: Mapping[str, Any], options: dict[str, Any], model_id: str | None) -> None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` into ``options``."""
    tools: list[FunctionTool] | None = None
    if "tools" in params:
        tools = check_tools(params["tools"], functions_only=True, model_id=model_id)
        options["tools"] = [_tool(tool) for tool in tools]
    choice: dict[str, Any] | None = None
    if "tool_choice" in params:
        checked = check_tool_choice(params["tool_choice"], tools, model_id=model_id)
        if checked is None:
            raise bad_request(
                f"tool_choice of type {params['tool_choice']['type']!r}: not expressible in "
                "the Anthropic Messages protocol",
                model_id=model_id,
            )
        if checked.name is not None:
            choice = {"type": "tool", "name": checked.name}
        else:
            choice = {"type": _TOOL_CHOICES[checked.mode]}
    parallel = params.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request("parallel_tool_calls must be true or false", model_id=model_id)
    if not parallel and tools and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        options["tool_choice"] = choice


def _tool(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = (
        dict(tool.parameters) if tool.parameters is not None else {"type": "object"}
    )
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def _answer_tool(
    params: Mapping[str, Any], options: dict[str, Any], model_id: str | None
) -> str | None:
    """A JSON ``response_format`` as one forced tool in ``options``; the tool's name."""
    form = check_response_format(params["response_format"], model_id=model_id)
    if form.type == "text":
        return None
    given = sorted({"tools", "tool_choice"} & params.keys())
    if given:
        raise bad_request(
            f"response_format {form.type} and {' and '.join(given)}: on the Anthropic protocol "
            "a JSON answer is a forced tool call, which leaves no choice of tools",
            model_id=model_id,
        )
    thinking = params.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") != "disabled":
        raise bad_request(
            f"response_format {form.type} and thinking: on the Anthropic protocol a JSON answer "
            "is a forced tool call, which the API refuses with extended thinking",
            model_id=model_id,
        )
    tool = _schema_tool(form, model_id)
    options["tools"] = [tool]
    options["tool_choice"] = {"type": "tool", "name": tool["name"]}
    return str(tool["name"])


def _schema_tool(form: ResponseFormat, model_id: str | None) -> dict[str, Any]:
    schema = dict(form.schema) if form.schema is not None else {"type": "object"}
    if schema.get("type") != "object":
        raise bad_request(
            "response_format.json_schema.schema must describe an object (type: object) on "
            f"the Anthropic protocol, got type {schema.get('type')!r}",
            model_id=model_id,
        )
    tool: dict[str, Any] = {
        "name": form.name or JSON_OBJECT_TOOL,
        "description": form.description or _ANSWER_TOOL_DESCRIPTION,
        "input_schema": schema,
    }
    if form.strict is not None:
        tool["strict"] = form.strict
    return tool
