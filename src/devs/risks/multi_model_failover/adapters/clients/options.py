"""The one request shape every client takes: chat messages and options in the OpenAI shape.

``params`` given to ``call``/``stream`` are merged over the client's configured ``params`` for
that call only: a new dict each call, so nothing leaks into the next. A key whose value is
None is left out of the request (a per-call None unsets a configured option); ``model``,
``messages`` and ``stream`` are the client's own and cannot be given per call.

The shapes checked here (on both protocols, before any request is sent; each problem is a
``ModelError(kind=bad_request)`` naming the key):

=================  ===========================================================================
``tools``          a list of ``{"type": "function", "function": {"name", "description"?,
                   "parameters"?, "strict"?}}`` (the OpenAI client also passes other tool
                   types, such as ``custom``, as they are)
``tool_choice``    ``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function",
                   "function": {"name": ...}}`` naming one of ``tools``; all but ``"none"``
                   need ``tools``
``response_format``  ``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type":
                   "json_schema", "json_schema": {"name", "schema"?, "description"?,
                   "strict"?}}``
``stop``           a string or a list of strings
=================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from ...core.errors import ErrorKind, ModelError
from ...core.protocols import Params
from ...core.responses import ToolCall

# What every request of a client carries as its own: never an option.
OWN_KEYS: Final = frozenset({"model", "messages", "stream"})
TOOL_CHOICES: Final = ("auto", "none", "required")
RESPONSE_FORMATS: Final = ("text", "json_object", "json_schema")


class FunctionTool(NamedTuple):
    """A function tool as given, checked."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(NamedTuple):
    """``mode`` is ``auto``, ``none``, ``required`` or ``function`` (then ``name`` says which)."""

    mode: str
    name: str | None = None


class ResponseFormat(NamedTuple):
    """``type`` is ``text``, ``json_object`` or ``json_schema`` (with the schema's parts)."""

    type: str
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


def bad_request(message: str, *, model_id: str | None = None) -> ModelError:
    """The error of a request the client refuses to send."""
    return ModelError(message, kind=ErrorKind.BAD_REQUEST, model_id=model_id)


def merge_params(
    configured: Params, given: Params | None, *, model_id: str | None = None
) -> dict[str, Any]:
    """``given`` over ``configured``, as a new dict; ``bad_request`` for a key of the client's
    own (``model``, ``messages``, ``stream``) given per call."""
    if not given:
        return dict(configured)
    own = sorted(OWN_KEYS & given.keys())
    if own:
        raise bad_request(
            f"params {', '.join(own)}: the client's own, not an option of a call",
            model_id=model_id,
        )
    return {**configured, **given}


def without_none(params: Params) -> dict[str, Any]:
    """``params`` without the keys whose value is None."""
    return {key: value for key, value in params.items() if value is not None}


def _name_of(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def check_function(entry: object, where: str, *, model_id: str | None) -> FunctionTool:
    """One ``{"type": "function", "function": {...}}`` entry of ``tools``, checked."""
    if not isinstance(entry, Mapping) or entry.get("type") != "function":
        raise bad_request(
            f'{where} must be {{"type": "function", "function": {{"name": ...}}}}',
            model_id=model_id,
        )
    function = entry.get("function")
    if not isinstance(function, Mapping) or _name_of(function.get("name")) is None:
        raise bad_request(f"{where}.function.name must be a non-empty string", model_id=model_id)
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise bad_request(
            f"{where}.function.parameters must be a JSON schema (an object)", model_id=model_id
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"{where}.function.description must be a string", model_id=model_id)
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad_request(f"{where}.function.strict must be true or false", model_id=model_id)
    return FunctionTool(function["name"], description, parameters, strict)


def check_tools(
    value: object, *, functions_only: bool, model_id: str | None = None
) -> list[FunctionTool]:
    """The function tools of ``tools``; other tool types pass unless ``functions_only``."""
    if not isinstance(value, list | tuple):
        raise bad_request(
            f"tools must be a list of function tools, got {type(value).__name__}",
            model_id=model_id,
        )
    tools: list[FunctionTool] = []
    for i, entry in enumerate(value):
        other = isinstance(entry, Mapping) and isinstance(entry.get("type"), str)
        if not functions_only and other and entry["type"] != "function":
            continue
        tools.append(check_function(entry, f"tools[{i}]", model_id=model_id))
    return tools


def check_tool_choice(
    value: object, tools: list[FunctionTool] | None, *, model_id: str | None = None
) -> ToolChoice | None:
    """``tool_choice`` checked against ``tools`` (None: no tools given). None for a mapping
    of another type than ``function`` (passed as it is where the protocol knows it)."""
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise bad_request(
                f"tool_choice must be 'auto', 'none', 'required' or a function, got {value!r}",
                model_id=model_id,
            )
        choice = ToolChoice(value)
    elif isinstance(value, Mapping) and value.get("type") == "function":
        function = value.get("function")
        name = _name_of(function.get("name")) if isinstance(function, Mapping) else None
        if name is None:
            raise bad_request(
                "tool_choice.function.name must be a non-empty string", model_id=model_id
            )
        choice = ToolChoice("function", name)
    elif isinstance(value, Mapping) and isinstance(value.get("type"), str):
        return None
    else:
        raise bad_request(
            'tool_choice must be "auto", "none", "required" or {"type": "function", '
            f'"function": {{"name": ...}}}}, got {type(value).__name__}',
            model_id=model_id,
        )
    if choice.mode != "none" and tools is None:
        raise bad_request(f"tool_choice {choice.mode!r} needs tools", model_id=model_id)
    if choice.name is not None and choice.name not in {t.name for t in tools or ()}:
        raise bad_request(
            f"tool_choice names the function {choice.name!r}, which is not among tools",
            model_id=model_id,
        )
    return choice


def check_response_format(value: object, *, model_id: str | None = None) -> ResponseFormat:
    """``response_format``, checked."""
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind not in RESPONSE_FORMATS:
        raise bad_request(
            'response_format must be {"type": "text"}, {"type": "json_object"} or '
            f'{{"type": "json_schema", "json_schema": {{...}}}}, got {_short(value)}',
            model_id=model_id,
        )
    assert isinstance(value, Mapping)  # noqa: S101 - for mypy: kind came from it
    if kind != "json_schema":
        return ResponseFormat(kind)
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or _name_of(spec.get("name")) is None:
        raise bad_request(
            "response_format.json_schema.name must be a non-empty string", model_id=model_id
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise bad_request(
            "response_format.json_schema.schema must be a JSON schema (an object)",
            model_id=model_id,
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(
            "response_format.json_schema.description must be a string", model_id=model_id
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad_request(
            "response_format.json_schema.strict must be true or false", model_id=model_id
        )
    return ResponseFormat(kind, spec["name"], schema, description, strict)


def check_stop(value: object, *, model_id: str | None = None) -> list[str]:
    """``stop`` as a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(s, str) for s in value):
        return list(value)
    raise bad_request(
        f"stop must be a string or a list of strings, got {_short(value)}", model_id=model_id
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- answers ------------------------------------------------------------------------------


def canonical_json(text: str) -> str:
    """``text`` as msgspec encodes the JSON it holds ("{}" when empty), so that the same
    arguments read the same from both protocols, whole or streamed; as it is when it is not
    valid JSON (an answer cut short by ``max_tokens`` may leave half a document)."""
    if not text.strip():
        return "{}"
    try:
        return msgspec.json.encode(msgspec.json.decode(text)).decode()
    except msgspec.DecodeError:
        return text


class _Pieces:
    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


class ToolCallParts:
    """Tool calls arriving in pieces (stream deltas), keyed by the protocol's index, kept in
    the order they began."""

    def __init__(self) -> None:
        self._calls: list[_Pieces] = []
        self._at: dict[int, _Pieces] = {}

    def add(
        self, index: int, *, id: str | None = None, name: str | None = None, arguments: str = ""
    ) -> None:
        """One piece of the call at ``index``: its id and name arrive once, its arguments in
        fragments. A new ``id`` at an index already used begins a new call (servers that send
        each call whole may give every one the same index)."""
        pieces = self._at.get(index)
        if pieces is None or (id and pieces.id and id != pieces.id):
            pieces = self._at[index] = _Pieces()
            self._calls.append(pieces)
        pieces.id = pieces.id or id or None
        pieces.name = pieces.name or name or None
        if arguments:
            pieces.arguments.append(arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls, their arguments re-encoded by msgspec (``canonical_json``); a call
        without an id gets ``call_<n>``."""
        calls = []
        for n, pieces in enumerate(self._calls):
            arguments = "".join(pieces.arguments)
            calls.append(
                ToolCall(
                    id=pieces.id or f"call_{n}",
                    name=pieces.name or "",
                    arguments=canonical_json(arguments),
                )
            )
        return tuple(calls)
