"""A route that accepts the connection and never answers: fail over at once, after one
timeout, instead of waiting for the same silence twice."""

from __future__ import annotations

import time

import pytest

from devs.risks.multi_model_failover import ErrorKind

from .catalogue import silence
from .provider import FaultyProvider
from .support import CLIENT_TIMEOUT, OTHER, PROMPT, drain, events_of, failover

pytestmark = pytest.mark.anyio

# A failover after one timeout takes about one timeout; a retry first would take two.
AT_MOST = 1.6 * CLIENT_TIMEOUT


@pytest.mark.parametrize(
    ("anyio_backend", "wire"),
    [("asyncio", "openai"), ("asyncio", "anthropic"), ("trio", "openai")],
)
async def test_a_silent_model_fails_over_after_one_timeout(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", "An answer from the primary model.")
    fallback = provider.add("fallback", "An answer from the fallback model.")
    primary.fail_always(silence())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        started = time.monotonic()
        outcome = await fo.call_with_outcome(PROMPT)
        took = time.monotonic() - started
        assert outcome.response.text == fallback.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 2, 1)
        (failed,) = events_of(fo, "attempt_failed")
        assert (failed.model_id, failed.error_kind, failed.final) == (
            "primary",
            ErrorKind.TIMEOUT,
            True,
        )
        assert events_of(fo, "backoff") == []
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.TIMEOUT
    (asked,) = provider.calls("primary")
    (answered,) = provider.calls("fallback")
    assert 0.95 * CLIENT_TIMEOUT <= answered.at - asked.at < AT_MOST
    assert took < AT_MOST


@pytest.mark.parametrize(("anyio_backend", "wire"), [("asyncio", "anthropic"), ("trio", "openai")])
async def test_a_silent_stream_fails_over_before_its_first_chunk(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", "An answer from the primary model.")
    fallback = provider.add("fallback", "An answer from the fallback model.")
    primary.fail_always(silence())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        started = time.monotonic()
        chunks = await drain(fo.stream(PROMPT))
        took = time.monotonic() - started
        assert "".join(chunks) == fallback.answer
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.TIMEOUT
    (asked,) = provider.calls("primary")
    (answered,) = provider.calls("fallback")
    assert asked.streamed
    assert answered.streamed
    assert 0.95 * CLIENT_TIMEOUT <= answered.at - asked.at < AT_MOST
    assert took < AT_MOST
