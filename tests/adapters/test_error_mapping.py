"""The HTTP-to-ErrorKind table, Retry-After parsing and the SSE decoder, without a server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from helpers import NOW, OPENAI_KEY

from devs.risks.multi_model_failover import ErrorKind
from devs.risks.multi_model_failover.adapters.clients.errors import (
    MESSAGE_LIMIT,
    ProviderError,
    error_from_response,
    kind_for_status,
    kind_for_stream_error,
    limit_message,
    parse_duration,
    parse_provider_error,
    retry_after_seconds,
)
from devs.risks.multi_model_failover.adapters.clients.sse import (
    ServerSentEvent,
    iter_events,
    split_lines,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1m30.5s", 90.5),
        ("1h2m3s", 3723.0),
        ("7", 7.0),
        ("0.25", 0.25),
        ("soon", None),
        ("", None),
        ("5x", None),
    ],
)
def test_durations_in_provider_headers(text: str, seconds: float | None) -> None:
    expected = None if seconds is None else pytest.approx(seconds)
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "Sat, 01 Mar 2025 12:01:00 GMT"}, 60.0),
        ({"retry-after": "Sat, 01 Mar 2025 11:59:00 GMT"}, 0.0),  # already past: no wait
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "not a date"}, None),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "1m"}, 60.0),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "40",
                "x-ratelimit-reset-tokens": "1m",
            },
            2.0,
        ),
        ({"anthropic-ratelimit-requests-reset": "2025-03-01T12:00:30+00:00"}, 30.0),
        ({"anthropic-ratelimit-output-tokens-reset": "2025-03-01T12:00:05"}, 5.0),
        ({"anthropic-ratelimit-tokens-reset": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers), NOW) == seconds


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"error": {"message": "m", "type": "t", "code": "c"}}',
            ProviderError("c", "t", "m"),
        ),
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            ProviderError("", "overloaded_error", "Overloaded"),
        ),
        (b'{"error": "model \\"x\\" not found"}', ProviderError(message='model "x" not found')),
        (b'{"detail": "Not Found"}', ProviderError(message="Not Found")),
        (b'{"error": {"code": 400, "message": "m"}}', ProviderError("400", "", "m")),
        (
            b'{"error": {"message": "m", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}',
            ProviderError("ResponsibleAIPolicyViolation", "", "m"),
        ),
        (b"<html>502</html>", ProviderError(message="<html>502</html>")),
        (b"[1, 2]", ProviderError(message="[1, 2]")),
        (b'{"error": 3}', ProviderError(message='{"error": 3}')),
    ],
)
def test_error_bodies_in_every_common_shape(body: bytes, error: ProviderError) -> None:
    assert parse_provider_error(body) == error


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, ProviderError(), ErrorKind.RATE_LIMITED),
        (429, ProviderError(code="insufficient_quota"), ErrorKind.AUTH),
        (408, ProviderError(), ErrorKind.TIMEOUT),
        (504, ProviderError(), ErrorKind.TIMEOUT),
        (524, ProviderError(), ErrorKind.TIMEOUT),
        (500, ProviderError(), ErrorKind.SERVER),
        (529, ProviderError(), ErrorKind.SERVER),
        (401, ProviderError(), ErrorKind.AUTH),
        (403, ProviderError(), ErrorKind.AUTH),
        (404, ProviderError(), ErrorKind.AUTH),
        (413, ProviderError(), ErrorKind.CONTEXT_LENGTH),
        (400, ProviderError(code="context_length_exceeded"), ErrorKind.CONTEXT_LENGTH),
        (
            400,
            ProviderError(message="Input is too long for requested model."),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (
            400,
            ProviderError(message="This model's maximum context length is 4096 tokens. However..."),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (400, ProviderError(code="content_filter"), ErrorKind.CONTENT_FILTER),
        (
            400,
            ProviderError(
                message="Invalid prompt: your prompt was flagged as potentially violating "
                "our usage policy"
            ),
            ErrorKind.CONTENT_FILTER,
        ),
        (400, ProviderError(message="temperature must be <= 2"), ErrorKind.BAD_REQUEST),
        (422, ProviderError(), ErrorKind.BAD_REQUEST),
        (409, ProviderError(), ErrorKind.BAD_REQUEST),
        (302, ProviderError(), ErrorKind.SERVER),
    ],
)
def test_status_and_body_decide_the_kind(
    status: int, error: ProviderError, kind: ErrorKind
) -> None:
    assert kind_for_status(status, error) is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ProviderError(type="overloaded_error"), ErrorKind.SERVER),
        (ProviderError(type="rate_limit_error"), ErrorKind.RATE_LIMITED),
        (ProviderError(type="authentication_error"), ErrorKind.AUTH),
        (ProviderError(type="timeout_error"), ErrorKind.TIMEOUT),
        (
            ProviderError(type="invalid_request_error", message="prompt is too long"),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (ProviderError(type="invalid_request_error"), ErrorKind.BAD_REQUEST),
        (ProviderError(code="content_filter"), ErrorKind.CONTENT_FILTER),
        (ProviderError(message="something odd"), ErrorKind.SERVER),
    ],
)
def test_errors_inside_a_stream_are_classified_by_type(
    error: ProviderError, kind: ErrorKind
) -> None:
    assert kind_for_stream_error(error) is kind


def test_messages_are_scrubbed_before_they_are_cut() -> None:
    # The key straddles the cut: cutting first would leave most of it behind.
    text = "x" * (MESSAGE_LIMIT - 40) + f" key {OPENAI_KEY} " + "y" * 500
    message = limit_message(text)
    assert len(message) <= MESSAGE_LIMIT
    assert OPENAI_KEY[:12] not in message
    assert message.endswith("...")


def test_a_rate_limit_error_carries_its_hint_and_nothing_else_does() -> None:
    headers = httpx.Headers({"retry-after": "5"})
    assert error_from_response(429, headers, b"{}", now=NOW).retry_after == 5.0
    assert error_from_response(503, headers, b"{}", now=NOW).retry_after is None


def test_lines_split_on_every_ending_and_hold_a_lone_cr() -> None:
    assert split_lines(b"a\r\nb\nc\rd") == ([b"a", b"b", b"c"], b"d")
    assert split_lines(b"a\r") == ([], b"a\r")
    assert split_lines(b"a\r" + b"\nb\n") == ([b"a", b"b"], b"")
    assert split_lines("x\u2028y\n".encode()) == (["x\u2028y".encode()], b"")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
async def test_events_from_chunks_split_anywhere() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'event: delta\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"data: tail\n\n"
        b"data: lost"
    )
    for size in (1, 2, 5, len(stream)):
        parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        events = [e async for e in iter_events(_chunks(*parts))]
        assert events == [
            ServerSentEvent(event="delta", data='{"a":\n1}'),
            ServerSentEvent(event="message", data="tail"),
        ]
