"""``stream()`` returns a ``TextStream``: what the provider said about the answer, once it ended,
and malformed events skipped and counted rather than fatal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from fake_provider import FakeProvider, Reply, sse
from helpers import ANTHROPIC, OPENAI, WIRES, Wire

from devs.risks.multi_model_failover import ErrorKind, ModelError, Usage
from devs.risks.multi_model_failover.adapters.clients import HTTPModelClient, TextStream

pytestmark = pytest.mark.anyio

CHUNKS = ["Hel", "lo, ", "wor", "ld"]
# Text that must never reach a log line: it stands for the prompt a provider may echo.
ECHO = "PATIENT-RECORD-4711"


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(wire: Wire, provider: FakeProvider) -> AsyncIterator[HTTPModelClient]:
    http = wire.client(provider, model_id="primary", timeout=2.0)
    yield http
    await http.aclose()


async def collect(stream: TextStream, into: list[str] | None = None) -> list[str]:
    got = [] if into is None else into
    async with aclosing(stream) as chunks:
        async for chunk in chunks:
            got.append(chunk)
    return got


# -- the two protocols as their real servers stream, with ids, model and usage --------------


def openai_stream(
    chunks: list[str], *, finish: str = "stop", usage: bool = True, id_: str = "chatcmpl-9x"
) -> tuple[str, ...]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": id_, "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
        return sse({**body, "choices": choices, "usage": None, **extra})

    blocks = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    blocks += [chunk([{"index": 0, "delta": {"content": c}}]) for c in chunks]
    blocks.append(chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage:
        counts = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}
        blocks.append(chunk([], usage=counts))
    return (*blocks, sse("[DONE]"))


def anthropic_stream(chunks: list[str], *, stop_reason: str = "end_turn") -> tuple[str, ...]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    }
    blocks = [
        sse(start, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        sse({"type": "ping"}, "ping"),
    ]
    blocks += [
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}},
            "content_block_delta",
        )
        for c in chunks
    ]
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": 15},
    }
    blocks += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(delta, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return tuple(blocks)


async def test_an_openai_stream_reports_usage_model_finish_and_request_id(
    provider: FakeProvider,
) -> None:
    provider.script(
        OPENAI.chat,
        Reply(events=openai_stream(CHUNKS), headers={"x-request-id": "req_abc"}),
        Reply(events=openai_stream(CHUNKS, finish="length", usage=False)),
    )
    async with OPENAI.client(provider, model_id="gpt") as client:
        stream = client.stream("hi")
        assert isinstance(stream, TextStream)
        assert (stream.usage, stream.finish_reason, stream.model, stream.request_id) == (
            None,
            None,
            None,
            None,
        )
        assert await collect(stream) == CHUNKS
        assert stream.usage == Usage(input_tokens=21, output_tokens=9)
        assert stream.finish_reason == "stop"
        assert stream.model == "gpt-4o-2024-08-06"
        assert stream.request_id == "req_abc"  # the header wins over the body's id
        assert stream.skipped == 0
        assert repr(stream) == (
            "TextStream(model_id='gpt', model='gpt-4o-2024-08-06', finish_reason='stop', skipped=0)"
        )

        second = client.stream("again")
        assert await collect(second) == CHUNKS
        assert (second.usage, second.finish_reason, second.request_id) == (
            None,  # a server that ignores include_usage: no usage, no guess
            "length",
            "chatcmpl-9x",
        )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "pause_turn"),  # unknown to the table: kept as given
    ],
)
async def test_an_anthropic_stream_reports_usage_model_finish_and_request_id(
    provider: FakeProvider, stop_reason: str, finish_reason: str
) -> None:
    provider.script(
        ANTHROPIC.chat,
        Reply(events=anthropic_stream(CHUNKS, stop_reason=stop_reason)),
        Reply(
            events=anthropic_stream(CHUNKS), headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
        ),
    )
    async with ANTHROPIC.client(provider, model_id="claude") as client:
        stream = client.stream("hi")
        assert await collect(stream) == CHUNKS
        # input from message_start, output from message_delta (cumulative, so the last wins)
        assert stream.usage == Usage(input_tokens=25, output_tokens=15)
        assert stream.finish_reason == finish_reason
        assert stream.model == "claude-sonnet-4-5-20250929"
        assert stream.request_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
        assert stream.skipped == 0
        second = client.stream("again")
        await collect(second)
        assert second.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("model_context_window_exceeded", "model_context_window_exceeded"),
    ],
)
async def test_call_normalises_the_finish_reason_too(
    provider: FakeProvider, stop_reason: str, finish_reason: str
) -> None:
    provider.script(ANTHROPIC.chat, Reply(body=ANTHROPIC.ok("x", stop_reason=stop_reason)))
    provider.script(OPENAI.chat, Reply(body=OPENAI.ok("x", finish_reason="tool_calls")))
    async with ANTHROPIC.client(provider, model_id="claude") as claude:
        assert (await claude.call("hi")).finish_reason == finish_reason
    async with OPENAI.client(provider, model_id="gpt") as gpt:
        assert (await gpt.call("hi")).finish_reason == "tool_calls"


async def test_openai_streams_ask_for_usage_unless_the_params_say_otherwise(
    provider: FakeProvider,
) -> None:
    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, {"include_usage": True}),
        ({"stream_options": {"include_usage": False}}, {"include_usage": False}),
        ({"stream_options": None}, "absent"),  # for a server that refuses the option
    ]
    for params, expected in cases:
        provider.script(
            OPENAI.chat, Reply(events=openai_stream(CHUNKS)), Reply(body=OPENAI.ok("x"))
        )
        async with OPENAI.client(provider, model_id="gpt", params=params) as client:
            await collect(client.stream("hi"))
            await client.call("hi")
        streamed, called = (r.json() for r in provider.requests[-2:])
        assert streamed.get("stream_options", "absent") == expected
        assert "stream_options" not in called  # OpenAI refuses it when not streaming


async def test_nothing_is_sent_until_the_first_chunk_is_asked_for(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(events=wire.events(CHUNKS)))
    stream = client.stream("hi")
    assert provider.requests == []
    await stream.aclose()
    assert provider.requests == []
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_async_with_closes_an_unfinished_stream_and_its_connection(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(
        wire.chat,
        Reply(events=wire.events(CHUNKS[:1], done=False), stall=True),
        Reply(events=wire.events(CHUNKS)),
    )
    async with client.stream("one") as stream:
        async for chunk in stream:
            assert chunk == CHUNKS[0]
            break
    assert await collect(client.stream("two")) == CHUNKS
    first, second = provider.requests
    assert first.port != second.port  # the abandoned connection was closed, not reused


# -- malformed events ----------------------------------------------------------------------

BAD_EVENTS = {
    "not json": f"data: {{{ECHO} was cut here\n\n",
    "a json string": sse(f"{ECHO}"),  # valid JSON, but not an object
    "wrong shape": sse({"choices": "nope", "delta": 3, "type": 7, "echo": ECHO}),
}


def with_malformed(wire: Wire, bad: list[str]) -> tuple[str, ...]:
    """The wire's stream of CHUNKS, with ``bad`` events after the first chunk."""
    events = wire.events(CHUNKS)
    first_text = 4 if wire is ANTHROPIC else 2  # after the preamble and one chunk
    return (*events[:first_text], *bad, *events[first_text:])


@pytest.mark.parametrize("bad", BAD_EVENTS.values(), ids=BAD_EVENTS)
async def test_a_malformed_event_is_skipped_counted_and_logged_without_its_text(
    wire: Wire,
    provider: FakeProvider,
    client: HTTPModelClient,
    bad: str,
    log_records: list[dict[str, Any]],
) -> None:
    provider.script(wire.chat, Reply(events=with_malformed(wire, [bad, bad])))
    stream = client.stream("hi")
    assert await collect(stream) == CHUNKS
    assert stream.skipped == 2
    assert stream.finish_reason == "stop"
    warnings = [r for r in log_records if r["level"].name == "WARNING"]  # type: ignore[attr-defined]
    assert len(warnings) == 2
    assert "skipped a malformed stream event from primary" in str(warnings[0]["message"])
    assert warnings[1]["extra"] == {"model_id": "primary", "skipped": 2}
    for record in log_records:
        assert ECHO not in repr(record)


async def test_five_malformed_events_in_a_row_are_survived_six_are_not(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    bad = BAD_EVENTS["not json"]
    provider.script(
        wire.chat,
        # Runs of five, broken by good events: the count is of a run, not of the stream.
        Reply(events=with_malformed(wire, [bad] * 5 + [wire.events([""])[1]] + [bad] * 5)),
        Reply(events=with_malformed(wire, [bad] * 6)),
    )
    survived = client.stream("one")
    assert await collect(survived) == CHUNKS
    assert survived.skipped == 10

    got: list[str] = []
    failed = client.stream("two")
    with pytest.raises(ModelError) as caught:
        await collect(failed, got)
    assert got == CHUNKS[:1]
    assert caught.value.kind is ErrorKind.SERVER
    assert "6 malformed stream events in a row" in caught.value.message
    assert ECHO not in caught.value.message
    assert failed.skipped == 6


async def test_a_stream_of_only_malformed_events_is_cut_short(
    wire: Wire, provider: FakeProvider, client: HTTPModelClient
) -> None:
    provider.script(wire.chat, Reply(events=(BAD_EVENTS["wrong shape"],) * 3))
    stream = client.stream("hi")
    with pytest.raises(ModelError) as caught:
        await collect(stream)
    assert caught.value.kind is ErrorKind.SERVER
    assert "ended before it was complete" in caught.value.message
    assert stream.skipped == 3
