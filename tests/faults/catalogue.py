"""The faults the provider can serve: each a ``Fault``, built by the function named after it.

An error answer's body takes the shape of the route it answers (OpenAI's ``{"error": {message,
type, code}}`` or Anthropic's ``{"type": "error", "error": {type, message}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["error", "reset", "silence", "cut", "stall", "malformed", "refusal"]


@dataclass(frozen=True)
class Fault:
    """One way of answering badly; ``name`` is what the record says was served.

    ``action``: ``error`` (an HTTP error answer: ``status``, an error body in the route's
    shape, ``headers``), ``reset`` (the socket closed before any byte of an answer),
    ``silence`` (the connection held open, nothing ever sent), ``cut`` (the stream dropped
    after ``after`` text chunks), ``stall`` (the stream goes silent after ``after`` text
    chunks, the connection open), ``malformed`` (an undecodable event after ``after`` text
    chunks, then the rest of the stream as usual), ``refusal`` (a 200 answer that refuses).
    """

    name: str
    action: Action
    status: int = 200
    message: str = ""
    openai_type: str = ""
    openai_code: str | None = None
    anthropic_type: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    after: int = 0


def unavailable() -> Fault:
    """503, the model overloaded."""
    return Fault(
        "503",
        "error",
        status=503,
        message="The server is overloaded or not ready yet.",
        openai_type="server_error",
        openai_code="service_unavailable",
        anthropic_type="overloaded_error",
    )


def server_error() -> Fault:
    """500, an internal error."""
    return Fault(
        "500",
        "error",
        status=500,
        message="The server had an error while processing your request.",
        openai_type="server_error",
        openai_code="internal_error",
        anthropic_type="api_error",
    )


def rate_limited(retry_after: float | None = None) -> Fault:
    """429, with a ``Retry-After`` header (seconds) when ``retry_after`` is given."""
    headers = () if retry_after is None else (("retry-after", f"{retry_after:g}"),)
    return Fault(
        "429" if retry_after is None else f"429 retry-after {retry_after:g}",
        "error",
        status=429,
        message="Rate limit reached for requests per minute. Please try again later.",
        openai_type="requests",
        openai_code="rate_limit_exceeded",
        anthropic_type="rate_limit_error",
        headers=headers,
    )


def context_length() -> Fault:
    """400, the prompt is longer than the model's context window."""
    return Fault(
        "context_length",
        "error",
        status=400,
        message="This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9123 tokens. Please reduce the length of the messages.",
        openai_type="invalid_request_error",
        openai_code="context_length_exceeded",
        anthropic_type="invalid_request_error",
    )


def content_filter() -> Fault:
    """400, the prompt was refused by the provider's content filter."""
    return Fault(
        "content_filter",
        "error",
        status=400,
        message="The response was filtered due to the prompt triggering the content "
        "management policy.",
        openai_type="invalid_request_error",
        openai_code="content_filter",
        anthropic_type="invalid_request_error",
    )


def refusal() -> Fault:
    """A 200 answer in which the model refuses (Anthropic ``stop_reason: refusal``; OpenAI
    ``message.refusal``, or ``finish_reason: content_filter`` in a stream)."""
    return Fault("refusal", "refusal", message="I can't help with that request.")


def reset() -> Fault:
    """The connection closed before a status line."""
    return Fault("reset", "reset")


def silence() -> Fault:
    """The request read, then nothing: no status line, no close."""
    return Fault("silence", "silence")


def cut(after: int) -> Fault:
    """The connection dropped after ``after`` text chunks (a JSON answer: halfway)."""
    return Fault(f"cut after {after}", "cut", after=after)


def stall(after: int) -> Fault:
    """No byte more after ``after`` text chunks, the connection held open."""
    return Fault(f"stall after {after}", "stall", after=after)


def malformed(after: int) -> Fault:
    """An undecodable event after ``after`` text chunks, then the rest (a JSON answer: not
    JSON)."""
    return Fault(f"malformed after {after}", "malformed", after=after)


def prefill_rejected() -> Fault:
    """400, the model does not accept a final assistant message (served by models built with
    ``reject_prefill=True``, not scheduled)."""
    return Fault(
        "prefill_rejected",
        "error",
        status=400,
        message="This model does not support assistant message prefill. "
        "The conversation must end with a user message.",
        openai_type="invalid_request_error",
        openai_code="invalid_value",
        anthropic_type="invalid_request_error",
    )
