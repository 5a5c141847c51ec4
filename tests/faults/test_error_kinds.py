"""The usual faults and the content filter, one call each: what the caller got, what the log
says, and what the provider saw (attempts, their spacing, which model answered)."""

from __future__ import annotations

import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
)

from .catalogue import (
    content_filter,
    context_length,
    rate_limited,
    refusal,
    reset,
    server_error,
    unavailable,
)
from .provider import FaultyProvider, Model
from .support import OTHER, PROMPT, WIRES, events_of, failover, gaps

pytestmark = pytest.mark.anyio

# How much later than the engine's recorded backoff a retry may arrive on a busy machine.
SLACK = 0.5


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest) -> str:
    """The primary's wire protocol; the fallback speaks the other one."""
    return str(request.param)


def pair(provider: FaultyProvider) -> tuple[Model, Model]:
    return (
        provider.add("primary", "An answer from the primary model."),
        provider.add("fallback", "An answer from the fallback model."),
    )


def failed_kinds(fo: MultiModelFailover, model_id: str) -> list[ErrorKind]:
    return [e.error_kind for e in events_of(fo, "attempt_failed") if e.model_id == model_id]


# -- content filter: fail fast unless the caller opts in --------------------------------

FILTERS = {
    "openai 400": ("openai", content_filter()),
    "anthropic 400": ("anthropic", content_filter()),
    "anthropic refusal": ("anthropic", refusal()),
    "openai refusal": ("openai", refusal()),
}


@pytest.mark.parametrize("case", FILTERS)
async def test_a_content_filter_fails_fast_with_the_providers_reason(
    provider: FaultyProvider, case: str
) -> None:
    wire, fault = FILTERS[case]
    primary, fallback = pair(provider)
    primary.fail_always(fault)
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        with pytest.raises(ModelError) as caught:
            await fo.call(PROMPT)
        error = caught.value
        assert not isinstance(error, AllModelsFailedError)
        assert error.kind is ErrorKind.CONTENT_FILTER
        assert error.model_id == "primary"
        if fault.action == "error":
            assert "content management policy" in error.message
            assert error.status == 400
            expected_code = "content_filter" if wire == "openai" else "invalid_request_error"
            assert error.code == expected_code
        else:
            assert "refus" in error.message.lower()
        (failed,) = events_of(fo, "call_failed")
        assert (failed.reason, failed.error_kind) == ("fail_fast", ErrorKind.CONTENT_FILTER)
        assert events_of(fo, "failover") == []
    assert len(provider.calls("primary")) == 1
    assert provider.seen("fallback", chat=None) == []


async def test_failing_over_on_a_content_filter_is_an_opt_in(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(content_filter())
    opt_in = {"error_actions": {"content_filter": "failover"}}
    async with failover(
        provider, (primary, wire), (fallback, OTHER[wire]), retry_policy=opt_in
    ) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == fallback.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 2, 1)
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.CONTENT_FILTER
    assert [s.fault for s in provider.calls("primary")] == ["content_filter"]
    assert [s.fault for s in provider.calls("fallback")] == [None]


# -- rate limits ------------------------------------------------------------------------


async def test_a_429_is_retried_on_the_same_model_after_its_retry_after(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_next(rate_limited(retry_after=1))
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == primary.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("primary", 2, 0)
        (backoff,) = events_of(fo, "backoff")
        assert backoff.retry_after == 1.0
        assert backoff.delay >= 1.0
    first, second = provider.calls("primary")
    assert (first.fault, second.fault) == ("429 retry-after 1", None)
    assert 0.98 <= second.at - first.at < backoff.delay + SLACK
    assert provider.seen("fallback", chat=None) == []


async def test_a_429_without_retry_after_backs_off_then_fails_over(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(rate_limited())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == fallback.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 3, 1)
        (backoff,) = events_of(fo, "backoff")
        assert backoff.retry_after is None
        assert failed_kinds(fo, "primary") == [ErrorKind.RATE_LIMITED] * 2
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.RATE_LIMITED
    first, second = provider.calls("primary")
    (answered,) = provider.calls("fallback")
    assert backoff.delay - 0.01 <= second.at - first.at < backoff.delay + SLACK
    assert answered.at >= second.at
    assert answered.fault is None


# -- server errors ----------------------------------------------------------------------


async def test_a_500_once_is_retried_on_the_same_model(provider: FaultyProvider, wire: str) -> None:
    primary, fallback = pair(provider)
    primary.fail_next(server_error())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == primary.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("primary", 2, 0)
        assert failed_kinds(fo, "primary") == [ErrorKind.SERVER]
        assert events_of(fo, "failover") == []
        (backoff,) = events_of(fo, "backoff")
    assert [s.fault for s in provider.calls("primary")] == ["500", None]
    (gap,) = gaps(provider.calls("primary"))
    assert backoff.delay - 0.01 <= gap < backoff.delay + SLACK
    assert provider.seen("fallback", chat=None) == []


async def test_a_persistent_503_is_retried_then_failed_over_until_the_model_is_unhealthy(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(unavailable())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        for n in (1, 2, 3):
            outcome = await fo.call_with_outcome(PROMPT)
            assert outcome.response.text == fallback.answer
            assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 3, 1)
            assert len(provider.calls("primary")) == 2 * n
        assert fo.states["primary"] is HealthState.UNHEALTHY
        # Straight to the fallback now: well within the trial cool-down, and no probe loop.
        for _ in range(2):
            outcome = await fo.call_with_outcome(PROMPT)
            assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 1, 0)
        assert failed_kinds(fo, "primary") == [ErrorKind.SERVER] * 6
    assert [s.fault for s in provider.calls("primary")] == ["503"] * 6
    assert [s.fault for s in provider.calls("fallback")] == [None] * 5


async def test_a_reset_before_headers_is_a_server_error_retried_then_failed_over(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(reset())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == fallback.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 3, 1)
        assert failed_kinds(fo, "primary") == [ErrorKind.SERVER] * 2
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.SERVER
    assert [s.fault for s in provider.calls("primary")] == ["reset"] * 2
    assert len(provider.calls("fallback")) == 1


async def test_context_length_exceeded_fails_over_at_once(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(context_length())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        outcome = await fo.call_with_outcome(PROMPT)
        assert outcome.response.text == fallback.answer
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 2, 1)
        assert events_of(fo, "backoff") == []
        (moved,) = events_of(fo, "failover")
        assert moved.reason is ErrorKind.CONTEXT_LENGTH
    assert [s.fault for s in provider.calls("primary")] == ["context_length"]
    assert len(provider.calls("fallback")) == 1


# -- what an error carries --------------------------------------------------------------

CODES = {
    ("openai", "503"): "service_unavailable",
    ("anthropic", "503"): "overloaded_error",
    ("openai", "429"): "rate_limit_exceeded",
    ("anthropic", "429"): "rate_limit_error",
}


async def test_every_failed_attempt_carries_the_http_status_and_provider_code(
    provider: FaultyProvider, wire: str
) -> None:
    primary, fallback = pair(provider)
    primary.fail_always(unavailable())
    fallback.fail_always(rate_limited())
    async with failover(provider, (primary, wire), (fallback, OTHER[wire])) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call(PROMPT)
    attempts = caught.value.attempts
    assert [(a.model_id, a.error_kind) for a in attempts] == [
        ("primary", ErrorKind.SERVER),
        ("primary", ErrorKind.SERVER),
        ("fallback", ErrorKind.RATE_LIMITED),
        ("fallback", ErrorKind.RATE_LIMITED),
    ]
    errors = [a.error for a in attempts]
    assert all(isinstance(e, ModelError) for e in errors)
    assert [(e.status, e.code) for e in errors if isinstance(e, ModelError)] == [
        (503, CODES[wire, "503"]),
        (503, CODES[wire, "503"]),
        (429, CODES[OTHER[wire], "429"]),
        (429, CODES[OTHER[wire], "429"]),
    ]
    assert len(provider.calls("primary")) == 2
    assert len(provider.calls("fallback")) == 2
