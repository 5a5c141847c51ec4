"""Provider failures translated into ``ModelError`` kinds: the table failover rests on.

=====================================================  ===============================
what the provider or the network did                   kind
=====================================================  ===============================
429 (``insufficient_quota``: the account is out)       ``rate_limited`` (``auth``)
408, 504, 524, read/connect/pool timeouts              ``timeout``
other 5xx (500, 502, 503, 529...), connection errors,  ``server``
dropped connections, malformed or truncated JSON, a
stream without its end marker, more than 5 malformed
stream events in a row (fewer are skipped)
401, 403, 404 (unknown model or path)                  ``auth``
413, or a 4xx whose code/message says context length   ``context_length``
a 4xx whose code/message says content filter,          ``content_filter``
``finish_reason=content_filter``, Anthropic
``stop_reason=refusal``
other 4xx (400, 405, 409, 422...)                      ``bad_request``
=====================================================  ===============================

Every ``ModelError`` made from a provider's answer carries ``status`` (the HTTP status; None
for an error event inside a stream, for a network failure and for a malformed answer) and
``code`` (the provider's ``error.code``, else its ``error.type``; None when it gave neither).

``retry_after`` comes from ``retry-after-ms``, then ``Retry-After`` (seconds or an HTTP date),
then the providers' rate-limit reset headers. Every message is scrubbed of secrets and cut to
``MESSAGE_LIMIT`` characters (scrubbed first, so a cut can never leave half a key behind).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, NamedTuple

import httpx
import msgspec

from ...core.errors import ErrorKind, ModelError
from ...core.scrub import describe_exception, scrub

MESSAGE_LIMIT: Final = 300
CODE_LIMIT: Final = 100
# A stream fails when more malformed events than this arrive in a row (fewer are skipped).
MALFORMED_IN_A_ROW: Final = 5
# How much of an error body is read and scrubbed before the message is cut.
BODY_LIMIT: Final = 64 * 1024

_CONTEXT_CODES: Final = frozenset(
    {
        "context_length_exceeded",
        "exceed_context_size_error",
        "string_above_max_length",
        "request_too_large",
    }
)
_CONTEXT_TEXT: Final = re.compile(
    r"context[ _-]?(?:length|window|size)|maximum context|prompt is too long"
    r"|input is too long|too many (?:input )?tokens|reduce the length of",
    re.IGNORECASE,
)
_FILTER_CODES: Final = frozenset(
    {"content_filter", "content_policy_violation", "responsibleaipolicyviolation", "invalid_prompt"}
)
_FILTER_TEXT: Final = re.compile(
    r"content[ _-]?(?:filter|management policy|policy)|flagged|safety system|usage polic",
    re.IGNORECASE,
)
# Error types (Anthropic's ``error.type``, OpenAI's ``error.type``/``code``) for failures that
# arrive without a status of their own, inside an event stream.
_TYPE_KINDS: Final[dict[str, ErrorKind]] = {
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.SERVER,
    "api_error": ErrorKind.SERVER,
    "server_error": ErrorKind.SERVER,
    "timeout_error": ErrorKind.TIMEOUT,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.AUTH,
    "insufficient_quota": ErrorKind.AUTH,
    "request_too_large": ErrorKind.CONTEXT_LENGTH,
    "invalid_request_error": ErrorKind.BAD_REQUEST,
}
_TIMEOUT_STATUSES: Final = frozenset({408, 504, 524})

# (remaining header, reset header): which limit ran out and when it refills.
_RESET_HEADERS: Final = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
)
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ProviderError(NamedTuple):
    """What an error body says: ``code``, ``type`` and ``message`` (empty when absent)."""

    code: str = ""
    type: str = ""
    message: str = ""


def limit_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` scrubbed of secrets, on one line, cut to ``limit`` characters."""
    text = scrub(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_provider_error(body: bytes | str) -> ProviderError:
    """The code, type and message of an error body in any of the common shapes.

    OpenAI and compatibles: ``{"error": {"message", "type", "code"}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}``; Ollama: ``{"error": "..."}``;
    FastAPI-style: ``{"detail": ...}``. Anything else becomes the message as text.
    """
    raw = body[:BODY_LIMIT]
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        data: Any = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return ProviderError(message=text.strip())
    if not isinstance(data, dict):
        return ProviderError(message=text.strip())
    error = data.get("error", data)
    if isinstance(error, str):
        return ProviderError(message=error)
    if not isinstance(error, dict):
        return ProviderError(message=text.strip())
    code = error.get("code")
    inner = error.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):
        code = code or inner["code"]
    message = error.get("message") or error.get("detail") or data.get("detail") or ""
    if not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    return ProviderError(
        code=str(code) if code is not None else "",
        type=str(error.get("type") or ""),
        message=message,
    )


def _says_context_length(error: ProviderError) -> bool:
    codes = {error.code.lower(), error.type.lower()}
    return bool(codes & _CONTEXT_CODES) or bool(_CONTEXT_TEXT.search(error.message))


def _says_content_filter(error: ProviderError) -> bool:
    codes = {error.code.lower(), error.type.lower()}
    return bool(codes & _FILTER_CODES) or bool(_FILTER_TEXT.search(error.message))


def kind_for_status(status: int, error: ProviderError) -> ErrorKind:
    """The kind of an HTTP error answer, from its status and what its body says."""
    if status == 429:
        # An exhausted quota refills with the bill, not in seconds: retrying cannot help.
        if error.code == "insufficient_quota":
            return ErrorKind.AUTH
        return ErrorKind.RATE_LIMITED
    if status in _TIMEOUT_STATUSES:
        return ErrorKind.TIMEOUT
    if status >= 500:
        return ErrorKind.SERVER
    # 404 is an unknown model or path: this client is misconfigured, another may serve.
    if status in (401, 403, 404):
        return ErrorKind.AUTH
    if status == 413 or (400 <= status < 500 and _says_context_length(error)):
        return ErrorKind.CONTEXT_LENGTH
    if 400 <= status < 500 and _says_content_filter(error):
        return ErrorKind.CONTENT_FILTER
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.SERVER  # 1xx/3xx: nothing this client can use


def kind_for_stream_error(error: ProviderError) -> ErrorKind:
    """The kind of an error reported inside an event stream (no HTTP status of its own)."""
    if _says_context_length(error):
        return ErrorKind.CONTEXT_LENGTH
    if _says_content_filter(error):
        return ErrorKind.CONTENT_FILTER
    for name in (error.type, error.code):
        kind = _TYPE_KINDS.get(name.lower())
        if kind is not None:
            return kind
    return ErrorKind.SERVER


def error_code(error: ProviderError) -> str | None:
    """The provider's own name for a failure: its ``code``, else its ``type``, else None."""
    code = error.code or error.type
    return limit_message(code, CODE_LIMIT) if code else None


def _describe(prefix: str, error: ProviderError) -> str:
    label = error.code or error.type
    text = f"{prefix} {label}" if label else prefix
    return f"{text}: {error.message}" if error.message else text


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    model_id: str | None = None,
) -> ModelError:
    """A ``ModelError`` for an HTTP answer that is not a success."""
    error = parse_provider_error(body)
    kind = kind_for_status(status, error)
    retry_after = retry_after_seconds(headers, now) if kind is ErrorKind.RATE_LIMITED else None
    return ModelError(
        limit_message(_describe(f"HTTP {status}", error)),
        kind=kind,
        retry_after=retry_after,
        model_id=model_id,
        status=status,
        code=error_code(error),
    )


def error_from_stream(error: ProviderError, *, model_id: str | None = None) -> ModelError:
    """A ``ModelError`` for an error event inside a stream (``status`` None: the HTTP answer
    itself was a success)."""
    kind = kind_for_stream_error(error)
    return ModelError(
        limit_message(_describe("stream error", error)),
        kind=kind,
        model_id=model_id,
        code=error_code(error),
    )


def error_from_transport(exc: httpx.HTTPError, *, model_id: str | None = None) -> ModelError:
    """A ``ModelError`` for a failure below HTTP: timeouts, refused or dropped connections."""
    kind = ErrorKind.TIMEOUT if isinstance(exc, httpx.TimeoutException) else ErrorKind.SERVER
    return ModelError(describe_exception(exc, limit=MESSAGE_LIMIT), kind=kind, model_id=model_id)


def malformed(
    what: str, exc: Exception | None = None, *, model_id: str | None = None
) -> ModelError:
    """A ``server`` error for an answer that is not what the wire protocol promises."""
    detail = f"{what}: {exc}" if exc is not None else what
    return ModelError(limit_message(detail), kind=ErrorKind.SERVER, model_id=model_id)


# -- Retry-After ------------------------------------------------------------------------


def _seconds(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_duration(value: str) -> float | None:
    """Seconds in ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"`` or a bare number."""
    value = value.strip()
    bare = _seconds(value)
    if bare is not None:
        return bare
    if not _DURATION.fullmatch(value):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def _until(moment: datetime, now: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - now).total_seconds()


def _http_date(value: str, now: datetime) -> float | None:
    try:
        return _until(parsedate_to_datetime(value), now)
    except (TypeError, ValueError, IndexError):
        return None


def _reset(value: str, now: datetime) -> float | None:
    """A reset header: a duration (OpenAI) or an RFC 3339 moment (Anthropic)."""
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:
        return _until(datetime.fromisoformat(value.strip()), now)
    except ValueError:
        return None


def _reset_hint(headers: Mapping[str, str], now: datetime) -> float | None:
    exhausted: list[float] = []
    every: list[float] = []
    for remaining_name, reset_name in _RESET_HEADERS:
        value = headers.get(reset_name)
        seconds = _reset(value, now) if value else None
        if seconds is None:
            continue
        every.append(seconds)
        if (headers.get(remaining_name) or "").strip() == "0":
            exhausted.append(seconds)
    chosen = exhausted or every
    return max(chosen) if chosen else None


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """The provider's wait hint in seconds (never negative), or None when it gives none."""
    found: float | None = None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        value = _seconds(milliseconds)
        found = value / 1000 if value is not None else None
    if found is None and (retry_after := headers.get("retry-after")):
        found = _seconds(retry_after)
        if found is None:
            found = _http_date(retry_after, now)
    if found is None:
        found = _reset_hint(headers, now)
    return None if found is None else max(0.0, found)
