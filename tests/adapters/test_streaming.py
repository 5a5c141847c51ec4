"""Streaming over SSE: both wire protocols, and failover until (never after) the first chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import pytest
from fake_provider import FakeProvider, Reply, openai_error, sse
from helpers import ANTHROPIC, OPENAI, WIRES, FakeSleep, Wire, event_types, events_of

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.adapters.clients import CallableClient, HTTPModelClient
from devs.risks.multi_model_failover.core.streaming import (
    StreamInterruptedError,
)

pytestmark = pytest.mark.anyio

CHUNKS = ["Hel", "lo, ", "wor", "ld"]
POLICY = {"max_attempts": 2, "base_delay": 0.5, "jitter": "none"}


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    http = wire.client(provider, model_id="primary", timeout=2.0)
    yield http
    await http.aclose()


async def collect(chunks: AsyncIterator[str], into: list[str] | None = None) -> list[str]:
    got = [] if into is None else into
    async for chunk in chunks:
        got.append(chunk)
    return got


def stream_error(wire: Wire, type_: str, message: str) -> str:
    if wire is OPENAI:
        return sse({"error": {"message": message, "type": type_}})
    return sse({"type": "error", "error": {"type": type_, "message": message}}, "error")


def filtered(wire: Wire) -> str:
    if wire is OPENAI:
        return sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
    return sse({"type": "message_delta", "delta": {"stop_reason": "refusal"}}, "message_delta")


# -- the clients -------------------------------------------------------------------------


async def test_a_client_streams_the_text_as_it_comes(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(events=wire.events(CHUNKS)))
    assert await collect(client.stream("Say hello")) == CHUNKS
    sent = provider.sent_to(wire.chat)[0]
    assert sent.json()["stream"] is True
    assert sent.headers["accept"] == "text/event-stream"


async def test_a_finished_stream_leaves_its_connection_for_the_next(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(
        wire.chat,
        Reply(events=wire.events(CHUNKS)),
        Reply(body=wire.ok("")),  # the health check's one-token request
        Reply(events=wire.events(CHUNKS[:1], done=False), stall=True),
        Reply(events=wire.events(CHUNKS)),
    )
    assert await collect(client.stream("one")) == CHUNKS
    assert await client.health_check()
    async with aclosing(client.stream("two")) as chunks:
        async for _ in chunks:
            break  # abandoned mid-body: this connection cannot be reused
    assert await collect(client.stream("three")) == CHUNKS
    ports = [r.port for r in provider.requests]
    assert ports[0] == ports[1] == ports[2]
    assert ports[3] != ports[2]


async def test_a_stream_that_stalls_mid_answer_times_out(
    wire: Wire, provider: FakeProvider
) -> None:
    provider.script(wire.chat, Reply(events=wire.events(CHUNKS[:2], done=False), stall=True))
    got: list[str] = []
    async with wire.client(provider, model_id="stalls", timeout=0.2) as client:
        with pytest.raises(ModelError) as caught:
            await collect(client.stream("hi"), got)
    assert got == CHUNKS[:2]
    assert caught.value.kind is ErrorKind.TIMEOUT


async def test_an_error_before_the_stream_keeps_its_kind(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(429, openai_error("slow down"), headers={"retry-after": "2"}))
    with pytest.raises(ModelError) as caught:
        await collect(client.stream("hi"))
    assert (caught.value.kind, caught.value.retry_after) == (ErrorKind.RATE_LIMITED, 2.0)


@pytest.mark.parametrize(
    ("tail", "drop", "kind"),
    [
        (
            lambda wire: (stream_error(wire, "overloaded_error", "Overloaded"),),
            False,
            ErrorKind.SERVER,
        ),
        (
            lambda wire: (stream_error(wire, "rate_limit_error", "slow"),),
            False,
            ErrorKind.RATE_LIMITED,
        ),
        (lambda wire: (filtered(wire),), False, ErrorKind.CONTENT_FILTER),
        (lambda wire: ("data: {not json\n\n",), False, ErrorKind.SERVER),
        (lambda wire: (), True, ErrorKind.SERVER),  # connection dropped mid-stream
        (lambda wire: (), False, ErrorKind.SERVER),  # clean close, but no end marker
    ],
    ids=[
        "error event",
        "rate limit event",
        "content filter",
        "invalid json",
        "dropped",
        "cut short",
    ],
)
async def test_a_broken_stream_raises_after_what_it_delivered(
    wire: Wire,
    provider: FakeProvider,
    client: HTTPModelClient,
    tail: Callable[[Wire], tuple[str, ...]],
    drop: bool,
    kind: ErrorKind,
) -> None:
    events = wire.events(CHUNKS[:2], done=False) + tail(wire)
    provider.script(wire.chat, Reply(events=events, drop=drop))
    got: list[str] = []
    with pytest.raises(ModelError) as caught:
        await collect(client.stream("hi"), got)
    assert got == CHUNKS[:2]
    assert caught.value.kind is kind


async def test_a_stream_that_never_starts_times_out(wire: Wire, provider: FakeProvider) -> None:
    provider.script(wire.chat, Reply(hang=True))
    async with wire.client(provider, model_id="slow", timeout=0.2) as client:
        with pytest.raises(ModelError) as caught:
            await collect(client.stream("hi"))
    assert caught.value.kind is ErrorKind.TIMEOUT


# -- through the engine --------------------------------------------------------------------


@pytest.fixture
async def engine(
    wire: Wire, make_provider: Callable[[], FakeProvider]
) -> AsyncIterator[tuple[MultiModelFailover, FakeProvider, FakeProvider]]:
    primary, fallback = make_provider(), make_provider()
    clients = [
        wire.client(primary, model_id="primary", timeout=2.0),
        ANTHROPIC.client(fallback, model_id="fallback", timeout=2.0),
    ]
    fo = MultiModelFailover(clients, POLICY, sleep=FakeSleep())
    yield fo, primary, fallback
    await fo.aclose()
    for http in clients:
        await http.aclose()


Engine = tuple[MultiModelFailover, FakeProvider, FakeProvider]


async def test_the_stream_fails_over_before_its_first_chunk(wire: Wire, engine: Engine) -> None:
    fo, primary, fallback = engine
    primary.script(wire.chat, then=Reply(503, "unavailable"))
    fallback.script(ANTHROPIC.chat, Reply(events=ANTHROPIC.events(CHUNKS)))
    assert await collect(fo.stream("hi")) == CHUNKS
    assert event_types(fo)[1:] == [
        "call_started",
        "attempt_started",
        "attempt_failed",
        "backoff",
        "attempt_started",
        "attempt_failed",
        "state_changed",
        "failover",
        "attempt_started",
        "attempt_succeeded",
        "call_succeeded",
    ]
    (done,) = events_of(fo, "call_succeeded")
    assert (done.model_id, done.attempts, done.failovers) == ("fallback", 3, 1)
    assert fo.metrics() == replay(fo.event_store).metrics


async def test_a_failure_after_the_first_chunk_is_raised_not_failed_over(
    wire: Wire, engine: Engine
) -> None:
    fo, primary, fallback = engine
    primary.script(wire.chat, Reply(events=wire.events(CHUNKS[:2], done=False), drop=True))
    got: list[str] = []
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(fo.stream("hi"), got)
    assert got == CHUNKS[:2]
    error = caught.value
    assert (error.kind, error.model_id, error.chunks, error.chars) == (
        ErrorKind.SERVER,
        "primary",
        2,
        7,
    )
    assert "2 chunk(s), 7 char(s) delivered" in error.message
    assert fallback.hits(ANTHROPIC.chat) == 0
    (failed,) = events_of(fo, "attempt_failed")
    assert (failed.model_id, failed.final, failed.error_kind) == ("primary", True, ErrorKind.SERVER)
    assert "7 char(s) delivered" in failed.message
    (call_failed,) = events_of(fo, "call_failed")
    assert (call_failed.reason, call_failed.failovers) == ("stream_interrupted", 0)
    assert events_of(fo, "failover") == []
    assert fo.states["primary"] is HealthState.DEGRADED
    assert fo.metrics() == replay(fo.event_store).metrics


async def test_stopping_early_cancels_the_call_without_blame(wire: Wire, engine: Engine) -> None:
    fo, primary, _ = engine
    primary.script(wire.chat, Reply(events=wire.events(CHUNKS)))
    async with aclosing(fo.stream("hi")) as chunks:
        async for chunk in chunks:
            assert chunk == CHUNKS[0]
            break
    assert event_types(fo)[-1] == "call_cancelled"
    assert fo.states["primary"] is HealthState.HEALTHY


async def test_a_bad_request_fails_the_stream_fast(wire: Wire, engine: Engine) -> None:
    fo, primary, fallback = engine
    primary.script(wire.chat, Reply(400, openai_error("bad 'temperature'")))
    with pytest.raises(ModelError) as caught:
        await collect(fo.stream("hi"))
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert fallback.requests == []


async def test_nobody_streaming_fails_like_a_call(wire: Wire, engine: Engine) -> None:
    fo, primary, fallback = engine
    primary.script(wire.chat, then=Reply(401, openai_error("bad key")))
    fallback.script(ANTHROPIC.chat, then=Reply(events=ANTHROPIC.events([], done=False)))
    with pytest.raises(AllModelsFailedError) as caught:
        await collect(fo.stream("hi"))
    assert [(a.model_id, a.error_kind) for a in caught.value.attempts] == [
        ("primary", ErrorKind.AUTH),
        ("fallback", ErrorKind.SERVER),
        ("fallback", ErrorKind.SERVER),
    ]
    assert events_of(fo, "call_failed")[0].reason == "exhausted"


async def test_a_client_that_cannot_stream_answers_in_one_chunk() -> None:
    async def answer(prompt: object) -> str:
        return f"echo: {prompt}"

    fo = MultiModelFailover([CallableClient(answer, model_id="local")])
    try:
        assert await collect(fo.stream("hi")) == ["echo: hi"]
        with pytest.raises(TypeError, match="prompt must be"):
            await collect(fo.stream(3))
    finally:
        await fo.aclose()
    assert event_types(fo)[-2] == "call_succeeded"
