"""Each HTTP fault, through a real ``MultiModelFailover``: retry, fail over, fail fast or
mark unhealthy, as the event log shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from fake_provider import FakeProvider, Reply, openai_error
from helpers import ANTHROPIC, OPENAI, OPENAI_KEY, FakeSleep, Wire, events_of

from devs.risks.multi_model_failover import (
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.adapters.clients import HTTPModelClient

pytestmark = pytest.mark.anyio

POLICY = {"max_attempts": 2, "base_delay": 0.5, "jitter": "none", "call_budget": 60}


@dataclass
class Pair:
    """A failover over two real servers: ``primary`` speaks ``wire``, ``fallback`` OpenAI."""

    fo: MultiModelFailover
    sleep: FakeSleep
    wire: Wire
    primary: FakeProvider
    fallback: FakeProvider


@asynccontextmanager
async def failover_pair(
    wire: Wire, make_provider: Callable[[], FakeProvider], *, timeout: float = 2.0
) -> AsyncIterator[Pair]:
    """``primary`` (speaking ``wire``, with ``timeout``) before an OpenAI ``fallback``."""
    primary, fallback = make_provider(), make_provider()
    fallback.script(OPENAI.chat, then=Reply(body=OPENAI.ok("from fallback")))
    clients: list[HTTPModelClient] = [
        wire.client(primary, model_id="primary", api_key=OPENAI_KEY, timeout=timeout),
        OPENAI.client(fallback, model_id="fallback"),
    ]
    sleep = FakeSleep()
    fo = MultiModelFailover(clients, POLICY, sleep=sleep)
    try:
        yield Pair(fo, sleep, wire, primary, fallback)
    finally:
        await fo.aclose()
        for client in clients:
            await client.aclose()


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def pair(wire: Wire, make_provider: Callable[[], FakeProvider]) -> AsyncIterator[Pair]:
    async with failover_pair(wire, make_provider) as built:
        yield built


def attempt_kinds(fo: MultiModelFailover, model_id: str) -> list[ErrorKind]:
    return [e.error_kind for e in events_of(fo, "attempt_failed") if e.model_id == model_id]


RETRIED_THEN_FAILED_OVER = {
    "500": Reply(500, openai_error("boom", type_="server_error")),
    "503": Reply(503, "Service Unavailable"),
    "dropped mid-body": Reply(200, OPENAI.ok("y" * 300), cut_at=40),
    "invalid json": Reply(200, "{not json"),
}
KINDS = {
    "500": ErrorKind.SERVER,
    "503": ErrorKind.SERVER,
    "dropped mid-body": ErrorKind.SERVER,
    "invalid json": ErrorKind.SERVER,
}


@pytest.mark.parametrize("fault", RETRIED_THEN_FAILED_OVER)
async def test_transient_faults_are_retried_then_failed_over(pair: Pair, fault: str) -> None:
    pair.primary.script(pair.wire.chat, then=RETRIED_THEN_FAILED_OVER[fault])
    outcome = await pair.fo.call_with_outcome("hi")
    assert outcome.response.text == "from fallback"
    assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 3, 1)
    assert attempt_kinds(pair.fo, "primary") == [KINDS[fault]] * 2
    assert [b.delay for b in events_of(pair.fo, "backoff")] == [0.5]
    (failover,) = events_of(pair.fo, "failover")
    assert (failover.from_model, failover.to_model, failover.reason) == (
        "primary",
        "fallback",
        KINDS[fault],
    )
    assert pair.fo.states["primary"] is HealthState.DEGRADED


async def test_a_silent_client_times_out_once_then_fails_over(
    wire: Wire, make_provider: Callable[[], FakeProvider]
) -> None:
    async with failover_pair(wire, make_provider, timeout=0.2) as slow:
        slow.primary.script(wire.chat, then=Reply(hang=True))
        outcome = await slow.fo.call_with_outcome("hi")
        # A silence fails over at once by default: retrying it would double the wait.
        assert (outcome.model_id, outcome.attempts, outcome.failovers) == ("fallback", 2, 1)
        assert attempt_kinds(slow.fo, "primary") == [ErrorKind.TIMEOUT]
        assert events_of(slow.fo, "failover")[0].reason is ErrorKind.TIMEOUT
        assert slow.primary.hits(wire.chat) == 1


async def test_a_429_is_retried_after_its_retry_after(pair: Pair) -> None:
    answer = Reply(body=pair.wire.ok("from primary"))
    pair.primary.script(
        pair.wire.chat,
        Reply(429, openai_error("slow down"), headers={"retry-after": "3"}),
        answer,
        Reply(
            429, openai_error("slow down"), headers={"retry-after": "Sat, 01 Mar 2025 12:00:04 GMT"}
        ),
        answer,
    )
    for _ in range(2):
        outcome = await pair.fo.call_with_outcome("hi")
        assert (outcome.response.text, outcome.model_id, outcome.attempts) == (
            "from primary",
            "primary",
            2,
        )
    backoffs = events_of(pair.fo, "backoff")
    assert [(b.delay, b.retry_after) for b in backoffs] == [(3.0, 3.0), (4.0, 4.0)]
    assert pair.sleep.delays == [3.0, 4.0]
    assert attempt_kinds(pair.fo, "primary") == [ErrorKind.RATE_LIMITED] * 2
    assert pair.fallback.hits(OPENAI.chat) == 0


async def test_a_429_asking_for_more_than_the_budget_fails_over_at_once(pair: Pair) -> None:
    pair.primary.script(
        pair.wire.chat,
        then=Reply(429, openai_error("quota window"), headers={"retry-after": "3600"}),
    )
    outcome = await pair.fo.call_with_outcome("hi")
    assert outcome.model_id == "fallback"
    assert attempt_kinds(pair.fo, "primary") == [ErrorKind.RATE_LIMITED]
    assert pair.sleep.delays == []


async def test_a_context_length_refusal_fails_over_without_retry_or_blame(pair: Pair) -> None:
    reply = Reply(
        400, openai_error("maximum context length is 8192 tokens", code="context_length_exceeded")
    )
    pair.primary.script(pair.wire.chat, then=reply)
    outcome = await pair.fo.call_with_outcome("a very long prompt")
    assert (outcome.model_id, outcome.attempts) == ("fallback", 2)
    (failed,) = events_of(pair.fo, "attempt_failed")
    assert (failed.error_kind, failed.final, failed.counts) == (
        ErrorKind.CONTEXT_LENGTH,
        True,
        False,
    )
    assert events_of(pair.fo, "backoff") == []
    assert pair.fo.states["primary"] is HealthState.HEALTHY


async def test_a_content_filter_refusal_fails_fast_with_the_providers_reason(pair: Pair) -> None:
    # Sending a refused prompt on to a model with a weaker filter would route around safety.
    reply = Reply(400, {"error": {"code": "content_filter", "message": "filtered by policy"}})
    pair.primary.script(pair.wire.chat, then=reply)
    with pytest.raises(ModelError) as caught:
        await pair.fo.call("a prompt the filter refuses")
    assert (caught.value.kind, caught.value.status, caught.value.code) == (
        ErrorKind.CONTENT_FILTER,
        400,
        "content_filter",
    )
    assert "filtered by policy" in caught.value.message
    assert pair.primary.hits(pair.wire.chat) == 1
    assert pair.fallback.hits(OPENAI.chat) == 0
    (failed,) = events_of(pair.fo, "call_failed")
    assert (failed.reason, failed.error_kind) == ("fail_fast", ErrorKind.CONTENT_FILTER)
    assert pair.fo.states["primary"] is HealthState.HEALTHY


async def test_a_401_marks_the_client_unhealthy_until_a_probe_passes(pair: Pair) -> None:
    pair.primary.script(
        pair.wire.chat,
        Reply(401, openai_error("Incorrect API key provided")),
        then=Reply(body=pair.wire.ok("")),  # the probe's one-token request passes
    )
    outcome = await pair.fo.call_with_outcome("hi")
    assert (outcome.model_id, outcome.attempts) == ("fallback", 2)
    assert attempt_kinds(pair.fo, "primary") == [ErrorKind.AUTH]
    assert pair.fo.states["primary"] is HealthState.UNHEALTHY
    assert pair.fo.rotation == ["fallback"]

    states = await pair.fo.check_health()
    assert states == {"primary": HealthState.HEALTHY, "fallback": HealthState.HEALTHY}
    changes = [(e.model_id, e.to_state) for e in events_of(pair.fo, "state_changed")]
    assert changes == [("primary", HealthState.UNHEALTHY), ("primary", HealthState.HEALTHY)]


async def test_a_bad_request_fails_the_call_fast(pair: Pair) -> None:
    pair.primary.script(
        pair.wire.chat, then=Reply(400, openai_error("'messages' must not be empty"))
    )
    with pytest.raises(ModelError) as caught:
        await pair.fo.call("hi")
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert "must not be empty" in caught.value.message
    assert pair.fallback.hits(OPENAI.chat) == 0
    (failed,) = events_of(pair.fo, "call_failed")
    assert (failed.reason, failed.error_kind) == ("bad_request", ErrorKind.BAD_REQUEST)
    assert pair.fo.states["primary"] is HealthState.HEALTHY


async def test_a_failing_probe_takes_a_client_out_of_rotation(
    wire: Wire, make_provider: Callable[[], FakeProvider]
) -> None:
    async with failover_pair(wire, make_provider, timeout=0.2) as probed:
        fo = probed.fo
        probed.primary.script(
            wire.chat, Reply(503, "down"), Reply(hang=True), then=Reply(body=wire.ok(""))
        )
        assert (await fo.check_health())["primary"] is HealthState.UNHEALTHY
        assert fo.rotation == ["fallback"]
        assert (await fo.check_health())["primary"] is HealthState.UNHEALTHY
        probes = [
            (p.ok, p.error_kind) for p in events_of(fo, "health_probe") if p.model_id == "primary"
        ]
        assert probes == [(False, ErrorKind.SERVER), (False, ErrorKind.TIMEOUT)]
        assert (await fo.check_health())["primary"] is HealthState.HEALTHY


# -- a provider that echoes the prompt in a long error ----------------------------------------

LONG_PROMPT = (
    "Please review this claim. " * 8
    + "Claimant SSN 078-05-1120, card 4111 1111 1111 1111, born 1970-01-01. "
    + "Summarise the claim history and flag anything unusual. " * 4
)


@pytest.mark.parametrize("chat", [False, True], ids=["text prompt", "chat prompt"])
async def test_a_long_echo_cut_by_the_adapter_leaves_no_piece_of_the_prompt(
    wire: Wire, make_provider: Callable[[], FakeProvider], chat: bool
) -> None:
    async with failover_pair(wire, make_provider) as pair:
        # The provider quotes the prompt whole in a long error: the adapter cuts it to 300
        # characters, in the middle of the echo.
        echo = "Your input was rejected: " + LONG_PROMPT
        pair.primary.script(wire.chat, then=Reply(status=400, body=openai_error(echo)))
        prompt: object = [{"role": "user", "content": LONG_PROMPT}] if chat else LONG_PROMPT
        with pytest.raises(ModelError) as caught:
            await pair.fo.call(prompt)  # type: ignore[arg-type]
        shown = [
            str(caught.value),
            repr(caught.value),
            *(e.message for e in events_of(pair.fo, "attempt_failed")),
        ]
    assert len(LONG_PROMPT) > 300
    for text in shown:
        for start in range(len(LONG_PROMPT) - 16):
            piece = LONG_PROMPT[start : start + 16]
            assert piece not in text, (piece, text)
