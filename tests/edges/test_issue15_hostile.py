"""Hostile tests for issue 15: per-call params, one request shape on two wire protocols, usage
and cost in the log, ``SyncMultiModelFailover`` and configuration as data.

Each test marked ``xfail(strict=True)`` shows a defect (its reason says which); the others
guard what held up under attack. Real objects throughout: local HTTP servers speaking each
protocol (``tests/adapters/fake_provider.py``), real threads, real signals, real SQLite logs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import signal
import threading
import time
import types
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.adapters.fake_provider import (
    FakeProvider,
    Reply,
    anthropic_message,
    anthropic_tool_use,
    openai_completion,
    openai_events,
    openai_tool_calls,
    sse,
)

from devs.risks.multi_model_failover import (
    ConfigError,
    DeadlineExceededError,
    ErrorKind,
    HealthState,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    SyncMultiModelFailover,
    Usage,
    replay,
)
from devs.risks.multi_model_failover.adapters.clients import (
    AnthropicClient,
    HTTPModelClient,
    OpenAIClient,
)

ROOT = Path(__file__).resolve().parents[2]
OPENAI_CHAT = "/chat/completions"
ANTHROPIC_CHAT = "/v1/messages"
ROOT_KEY = "multi_model_failover"
ONE_TRY = {"max_attempts": 1, "jitter": "none"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    p = FakeProvider().start()
    yield p
    p.stop()


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The background loop of a ``SyncMultiModelFailover``."""
    return str(request.param)


def _openai(p: FakeProvider, **kw: Any) -> OpenAIClient:
    kw.setdefault("model_id", "oa")
    return OpenAIClient(model="gpt-test", base_url=p.url, timeout=5, **kw)


def _anthropic(p: FakeProvider, **kw: Any) -> AnthropicClient:
    kw.setdefault("model_id", "an")
    return AnthropicClient(model="claude-test", base_url=p.url, timeout=5, **kw)


def _bodies(p: FakeProvider, path: str) -> list[dict[str, Any]]:
    """The JSON bodies ``path`` received, probes (one token of "ping") left out."""
    bodies = [r.json() for r in p.sent_to(path)]
    return [b for b in bodies if b.get("messages") != [{"role": "user", "content": "ping"}]]


def _types(fo: MultiModelFailover | SyncMultiModelFailover) -> list[str]:
    return [event.type for event in fo.event_store.read()]


def _attempt_events(fo: MultiModelFailover, type_: str) -> list[Any]:
    return [event for event in fo.event_store.read() if event.type == type_]


async def _drain(stream: Any) -> list[str]:
    """Every chunk of ``stream``, closing it however it ends."""
    async with stream:
        return [chunk async for chunk in stream]


def _ignore_errors(func: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(Exception):
        func(*args)


def _wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- per-call params: every exit path leaves the next call clean -----------------------------


@pytest.mark.anyio
async def test_per_call_params_never_outlive_their_call_on_any_exit_path(
    provider: FakeProvider,
) -> None:
    """A call that succeeds, one refused before sending, a stream left early and a call cut by
    its timeout, each with its own params: the next plain call sends the configured options
    and nothing else."""
    events = openai_events(["a", "b", "c"], done=False)
    provider.script(
        OPENAI_CHAT,
        Reply(body=openai_completion("one")),
        Reply(events=events, stall=True),
        Reply(hang=True),
        then=Reply(body=openai_completion("plain")),
    )
    client = _openai(provider, params={"temperature": 0.1, "max_tokens": 50})
    fo = MultiModelFailover({"oa": client}, ONE_TRY)
    try:
        await fo.call("first", params={"temperature": 0.9, "seed": 1, "stop": ["END"]})
        with pytest.raises(ModelError) as refused:
            await fo.call("second", params={"tools": "get_weather"})
        assert refused.value.kind is ErrorKind.BAD_REQUEST
        assert "tools" in refused.value.message
        async with fo.stream("third", params={"seed": 2, "tools": [WEATHER]}) as stream:
            assert await stream.__anext__() == "a"
        with pytest.raises(DeadlineExceededError):
            await fo.call("fourth", timeout=0.3, params={"seed": 3, "user": "alice"})
        assert (await fo.call("last")).text == "plain"
    finally:
        provider.release()
        await fo.aclose()
        await client.aclose()
    bodies = _bodies(provider, OPENAI_CHAT)
    assert [b["messages"][0]["content"] for b in bodies] == ["first", "third", "fourth", "last"]
    assert bodies[0]["temperature"] == 0.9
    assert bodies[0]["seed"] == 1
    last = bodies[-1]
    assert {k: v for k, v in last.items() if k not in ("model", "messages")} == {
        "temperature": 0.1,
        "max_tokens": 50,
        "stream": False,
    }
    assert client.params == {"temperature": 0.1, "max_tokens": 50}  # configured: untouched


class _Retrying:
    """Fails its first attempt (after ``release``), then answers; records each attempt's
    ``stop`` option as it was when the attempt began."""

    model_id = "retrying"

    def __init__(self) -> None:
        self.stops: list[list[str]] = []
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> str:
        assert params is not None
        self.stops.append(list(params["stop"]))
        if len(self.stops) == 1:
            self.entered.set()
            await self.release.wait()
            raise ModelError("blip", kind="server")
        return "ok"

    async def health_check(self) -> bool:
        return True


@pytest.mark.anyio
async def test_nested_params_are_frozen_for_the_whole_call() -> None:
    client = _Retrying()
    fo = MultiModelFailover([client], {"max_attempts": 2, "base_delay": 0.001, "jitter": "none"})
    stop = ["END"]
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: fo.call("hi", params={"stop": stop}))
            await client.entered.wait()
            stop.append("NEXT-CALL-ONLY")  # the caller prepares its next call meanwhile
            client.release.set()
    finally:
        await fo.aclose()
    assert client.stops == [["END"], ["END"]]


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_a_param_value_that_cannot_be_sent_is_a_bad_request_not_a_sick_model(
    provider: FakeProvider, wire: str
) -> None:
    numpy = pytest.importorskip("numpy")
    provider.script(OPENAI_CHAT, then=Reply(body=openai_completion("ok")))
    provider.script(ANTHROPIC_CHAT, then=Reply(body=anthropic_message("ok")))
    client: HTTPModelClient = _openai(provider) if wire == "openai" else _anthropic(provider)
    fo = MultiModelFailover([client], {"max_attempts": 2, "base_delay": 0.001})
    errors: list[ModelError] = []
    try:
        for _ in range(3):
            with pytest.raises(ModelError) as caught:
                await fo.call("hi", params={"temperature": numpy.float32(0.2)})
            errors.append(caught.value)
        states = fo.states
    finally:
        await fo.aclose()
        await client.aclose()
    assert [e.kind for e in errors] == [ErrorKind.BAD_REQUEST] * 3
    assert "temperature" in errors[0].message
    assert states == {client.model_id: HealthState.HEALTHY}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("configured", "given", "key", "sent"),
    [
        ({"max_completion_tokens": 1000}, {"max_tokens": 300}, "max_tokens", 300),
        ({"stop_sequences": ["###"]}, {"stop": ["END"]}, "stop_sequences", ["END"]),
        ({"metadata": {"user_id": "ops"}}, {"user": "alice"}, "metadata", {"user_id": "alice"}),
    ],
)
async def test_a_per_call_option_overrides_the_configured_alias_on_anthropic(
    provider: FakeProvider, configured: dict[str, Any], given: dict[str, Any], key: str, sent: Any
) -> None:
    provider.script(ANTHROPIC_CHAT, then=Reply(body=anthropic_message("ok")))
    client = _anthropic(provider, params=configured)
    try:
        await client.call("hi", params=given)
    finally:
        await client.aclose()
    assert _bodies(provider, ANTHROPIC_CHAT)[0][key] == sent


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"seed": 7}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0]"),
        ({"response_format": {"type": "json_object"}, "tools": [WEATHER]}, "response_format"),
        ({"stop": "END", "stop_sequences": ["X"]}, "stop_sequences"),
    ],
)
async def test_what_anthropic_cannot_express_is_refused_before_sending_on_call_and_stream(
    provider: FakeProvider, params: dict[str, Any], named: str
) -> None:
    """Through the engine: the call fails fast as bad_request naming the option, nothing
    reaches the server, the model's health is untouched and the next plain call works."""
    provider.script(ANTHROPIC_CHAT, then=Reply(body=anthropic_message("fine")))
    client = _anthropic(provider)
    fo = MultiModelFailover({"an": client}, ONE_TRY)
    try:
        with pytest.raises(ModelError) as by_call:
            await fo.call("hi", params=params)
        with pytest.raises(ModelError) as by_stream:
            await _drain(fo.stream("hi", params=params))
        assert provider.hits(ANTHROPIC_CHAT) == 0
        assert fo.states == {"an": HealthState.HEALTHY}
        assert (await fo.call("plain")).text == "fine"
    finally:
        await fo.aclose()
        await client.aclose()
    for error in (by_call.value, by_stream.value):
        assert error.kind is ErrorKind.BAD_REQUEST
        assert named in error.message
    failed = _attempt_events(fo, "attempt_failed")
    assert [(e.error_kind, e.counts) for e in failed] == [(ErrorKind.BAD_REQUEST, False)] * 2


# -- answers: refusals and tool calls ---------------------------------------------------------


@pytest.mark.anyio
async def test_an_openai_refusal_is_content_filter_whether_streamed_or_not(
    provider: FakeProvider,
) -> None:
    whole = openai_completion("")
    whole["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "No."}
    refused = (
        sse({"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}}]}),
        sse({"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse("[DONE]"),
    )
    provider.script(OPENAI_CHAT, Reply(body=whole), Reply(events=refused))
    client = _openai(provider)
    fo = MultiModelFailover({"oa": client}, ONE_TRY)
    streamed: list[str] = []
    try:
        with pytest.raises(ModelError) as by_call:
            await fo.call("how do I pick a lock?")
        assert by_call.value.kind is ErrorKind.CONTENT_FILTER
        with pytest.raises(ModelError) as by_stream:
            async with fo.stream("how do I pick a lock?") as stream:
                streamed.extend([chunk async for chunk in stream])
    finally:
        await fo.aclose()
        await client.aclose()
    assert by_stream.value.kind is ErrorKind.CONTENT_FILTER, streamed


def _anthropic_whole_input_events(name: str, tool_input: dict[str, Any]) -> tuple[str, ...]:
    """An Anthropic-compatible stream that gives a tool's whole input in its
    ``content_block_start`` and no ``input_json_delta`` (as some compatible proxies do)."""
    block = {"type": "tool_use", "id": "toolu_1", "name": name, "input": tool_input}
    start = {"type": "message_start", "message": {"id": "msg_1", "content": []}}
    return (
        sse(start, "message_start"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": block},
            "content_block_start",
        ),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    )


@pytest.mark.anyio
async def test_a_tool_input_given_whole_at_block_start_is_kept_when_streamed(
    provider: FakeProvider,
) -> None:
    provider.script(
        ANTHROPIC_CHAT,
        Reply(events=_anthropic_whole_input_events("get_weather", {"city": "Paris"})),
        Reply(events=_anthropic_whole_input_events("triage", {"severity": "high"})),
    )
    client = _anthropic(provider)
    schema = {"type": "object", "properties": {"severity": {"type": "string"}}}
    json_answer = {"type": "json_schema", "json_schema": {"name": "triage", "schema": schema}}
    try:
        tools = client.stream("weather?", params={"tools": [WEATHER]})
        assert [chunk async for chunk in tools] == []
        answer = client.stream("triage", params={"response_format": json_answer})
        text = "".join([chunk async for chunk in answer])
    finally:
        await client.aclose()
    assert [(c.name, json.loads(c.arguments)) for c in tools.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert json.loads(text) == {"severity": "high"}


# -- usage and cost -----------------------------------------------------------------------------


class _Billed:
    """A client that answers by prompt: when ``flaky``, ``fail-billed`` fails reporting usage
    and ``fail`` fails without; ``hang`` never answers, anything else answers with usage. Its
    stream answers ``a``, ``b`` with usage (or, for ``endless``, waits forever after ``a``)."""

    def __init__(self, model_id: str, usage: Usage, *, flaky: bool = False) -> None:
        self.model_id = model_id
        self.usage = usage
        self.flaky = flaky

    async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> ModelResponse:
        if self.flaky and prompt == "fail-billed":
            billed = Usage(input_tokens=100, output_tokens=20)
            raise ModelError("cut off", kind="server", usage=billed)
        if self.flaky and prompt == "fail":
            raise ModelError("down", kind="server")
        if prompt == "hang":
            await anyio.sleep_forever()
        return ModelResponse(
            text=f"{self.model_id}: {prompt}", model=self.model_id, usage=self.usage
        )

    def stream(self, prompt: str, params: Mapping[str, Any] | None = None) -> _UsageStream:
        return _UsageStream(endless=prompt == "endless")

    async def health_check(self) -> bool:
        return True


class _UsageStream:
    def __init__(self, *, endless: bool) -> None:
        self.usage: Usage | None = None
        self._chunks = self._run(endless)

    async def _run(self, endless: bool) -> AsyncIterator[str]:
        yield "a"
        if endless:
            await anyio.sleep_forever()
        yield "b"
        self.usage = Usage(input_tokens=5, output_tokens=7)

    def __aiter__(self) -> _UsageStream:
        return self

    async def __anext__(self) -> str:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_usage_and_cost_live_equal_the_replay_on_every_exit_path(tmp_path: Path) -> None:
    log = tmp_path / "usage.sqlite3"
    a = _Billed("a", Usage(input_tokens=1, output_tokens=1), flaky=True)
    b = _Billed("b", Usage(input_tokens=10, output_tokens=2))
    prices = {"a": {"input": 2.0, "output": 8.0}, "b": {"input": 1.0, "output": 1.0}}
    fo = MultiModelFailover({"a": a, "b": b}, ONE_TRY, event_store=str(log), prices=prices)
    async with fo:
        await fo.call("fail-billed", params={"seed": 1})  # a bills 100/20, fails; b answers
        await fo.call("fail")  # a fails unbilled; b answers
        async with fo.stream("stream", params={"seed": 2}) as stream:
            assert [chunk async for chunk in stream] == ["a", "b"]  # a: 5/7
        async with fo.stream("endless") as stream:
            assert await stream.__anext__() == "a"  # left early: no outcome, no usage
        with anyio.move_on_after(0.2):
            await fo.call("hang")  # a caller's cancellation
        await fo.set_maintenance("a", True)
        with anyio.move_on_after(0.2):
            await fo.call("hang")
        live = fo.metrics()
        assert live == replay(fo.event_store).metrics
    assert (live.input_tokens, live.output_tokens) == (100 + 10 + 10 + 5, 20 + 2 + 2 + 7)
    assert live.by_model["a"].cost == pytest.approx((100 * 2 + 20 * 8 + 5 * 2 + 7 * 8) / 1e6)
    assert live.by_model["b"].cost == pytest.approx((20 + 4) / 1e6)
    assert live.cost == pytest.approx(live.by_model["a"].cost + live.by_model["b"].cost)
    assert live.calls_cancelled == 3
    failed = [(e.model_id, e.input_tokens, e.cost) for e in _attempt_events(fo, "attempt_failed")]
    assert failed[:2] == [("a", 100, pytest.approx(360e-6)), ("a", None, None)]
    from_start = replay(log, from_start=True).metrics
    assert (from_start.input_tokens, from_start.output_tokens) == (125, 31)
    assert from_start.cost == pytest.approx(live.cost)
    assert replay(log).metrics.by_model["a"].cost == from_start.by_model["a"].cost


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_a_refusal_the_provider_billed_is_billed_in_the_log(
    provider: FakeProvider, wire: str
) -> None:
    provider.script(
        OPENAI_CHAT, then=Reply(body=openai_completion("", finish_reason="content_filter"))
    )
    provider.script(ANTHROPIC_CHAT, then=Reply(body=anthropic_message("", stop_reason="refusal")))
    client: HTTPModelClient = _openai(provider) if wire == "openai" else _anthropic(provider)
    model_id = client.model_id
    fo = MultiModelFailover([client], ONE_TRY, prices={model_id: {"input": 3.0, "output": 15.0}})
    try:
        with pytest.raises(ModelError) as caught:
            await fo.call("something the filter refuses")
        metrics = fo.metrics()
    finally:
        await fo.aclose()
        await client.aclose()
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    reported = (11, 7) if wire == "openai" else (12, 5)  # the fake bodies' usage
    (failed,) = _attempt_events(fo, "attempt_failed")
    assert (failed.input_tokens, failed.output_tokens) == reported
    assert (metrics.input_tokens, metrics.output_tokens) == reported


@pytest.mark.anyio
async def test_a_stream_broken_after_the_provider_reported_usage_is_billed(
    provider: FakeProvider,
) -> None:
    usage = {"input_tokens": 25, "output_tokens": 1}
    start = {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": usage}}
    text = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hel"},
    }
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = (
        sse(start, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        sse(text, "content_block_delta"),
        sse(overloaded, "error"),
    )
    provider.script(ANTHROPIC_CHAT, Reply(events=events))
    client = _anthropic(provider)
    fo = MultiModelFailover([client], ONE_TRY, prices={"an": {"input": 3.0, "output": 15.0}})
    try:
        with pytest.raises(ModelError):
            await _drain(fo.stream("hi"))
        metrics = fo.metrics()
    finally:
        await fo.aclose()
        await client.aclose()
    (failed,) = _attempt_events(fo, "attempt_failed")
    assert failed.input_tokens == 25
    assert metrics.input_tokens == 25


@pytest.mark.anyio
async def test_anthropic_cached_prompt_tokens_are_counted_as_input(provider: FakeProvider) -> None:
    body = anthropic_message("cached")
    body["usage"] = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 30000,
    }
    provider.script(ANTHROPIC_CHAT, Reply(body=body))
    client = _anthropic(provider)
    try:
        response = await client.call("a long, cached system prompt")
    finally:
        await client.aclose()
    assert response.usage.input_tokens == 10 + 2000 + 30000


@pytest.mark.anyio
async def test_an_out_of_range_token_count_from_a_server_does_not_break_metrics(
    provider: FakeProvider,
) -> None:
    body = openai_completion("ok")
    body["usage"] = {"prompt_tokens": 2**64, "completion_tokens": 3}
    provider.script(OPENAI_CHAT, then=Reply(body=body))
    client = _openai(provider)
    fo = MultiModelFailover([client], ONE_TRY)
    try:
        assert (await fo.call("hi")).text == "ok"
        metrics = fo.metrics()  # raises OverflowError
        assert metrics == replay(fo.event_store).metrics
    finally:
        await fo.aclose()
        await client.aclose()


class _Huge:
    model_id = "huge"

    async def call(self, prompt: str) -> ModelResponse:
        return ModelResponse(
            text="ok", model="m", usage=Usage(input_tokens=10**9, output_tokens=10**9)
        )

    async def health_check(self) -> bool:
        return True


@pytest.mark.anyio
async def test_a_cost_that_overflows_never_splits_live_from_replay() -> None:
    # A price that could make a cost overflow is refused (prices are bounded); the largest
    # allowed on the largest counts still sums to a finite cost, live and replayed alike.
    with pytest.raises(ValueError, match=r"prices\['huge'\]: price input must be a number"):
        MultiModelFailover([_Huge()], prices={"huge": {"input": 1e300, "output": 1e300}})
    fo = MultiModelFailover([_Huge()], prices={"huge": {"input": 1e6, "output": 1e6}})
    try:
        await fo.call("hi")
        live = fo.metrics()
        replayed = replay(fo.event_store).metrics
    finally:
        await fo.aclose()
    assert live == replayed
    assert live.cost == pytest.approx(2e9)


# -- configuration as data ----------------------------------------------------------------------

SEEN: list[dict[str, Any] | None] = []


def takes_params(prompt: str, params: Mapping[str, Any] | None = None) -> str:
    """The target of the ``callable`` clients configured below."""
    SEEN.append(None if params is None else dict(params))
    return f"configured: {prompt}"


@pytest.mark.anyio
async def test_a_callable_clients_configured_params_reach_it() -> None:
    SEEN.clear()
    document = {
        ROOT_KEY: {
            "clients": [
                {
                    "id": "local",
                    "kind": "callable",
                    "target": f"{__name__}:takes_params",
                    "params": {"temperature": 0.5},
                }
            ]
        }
    }
    async with MultiModelFailover.from_config(document, env={}) as fo:
        await fo.call("plain")
        await fo.call("tuned", params={"seed": 1})
    assert SEEN == [{"temperature": 0.5}, {"temperature": 0.5, "seed": 1}]


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ({"price": {"input": "0.15", "output": 0.6}}, "clients[0].price.input"),
        ({"price": {"input": 0.15}}, "clients[0].price"),
        ({"price": {"input": -1, "output": 0.6}}, "clients[0].price"),
        ({"price": {"input": float("nan"), "output": 0.6}}, "clients[0].price"),
        ({"price": {"input": 1, "output": 1, "currency": "EUR"}}, "clients[0].price"),
        ({"params": {"seed": 1}}, "'an'"),  # refused by the Anthropic protocol, at start-up
        ({"kind": "anthropik"}, "clients[0].kind"),
    ],
)
def test_a_bad_mapping_names_the_key_path_and_the_mapping(entry: dict[str, Any], path: str) -> None:
    client = {"id": "an", "kind": "anthropic", "model": "claude", "base_url": "http://127.0.0.1:9"}
    document = {ROOT_KEY: {"clients": [{**client, **entry}]}}
    with pytest.raises(ConfigError) as caught:
        MultiModelFailover.from_config(document, env={})
    assert path in str(caught.value)
    assert "the given mapping" in str(caught.value) or "client 'an'" in str(caught.value)


@pytest.mark.anyio
async def test_the_variable_wins_over_a_mapping_unless_it_is_blank() -> None:
    SEEN.clear()
    mine = {ROOT_KEY: {"clients": [{"id": "mine", "kind": "callable",
                                    "target": f"{__name__}:takes_params"}]}}  # fmt: skip
    theirs = {ROOT_KEY: {"clients": [{"id": "ops", "kind": "callable",
                                      "target": f"{__name__}:takes_params"}]}}  # fmt: skip
    blank = MultiModelFailover.from_config(mine, env={"MULTI_MODEL_FAILOVER_CONFIG": "  \n"})
    wins = MultiModelFailover.from_config(
        mine, env={"MULTI_MODEL_FAILOVER_CONFIG": json.dumps(theirs)}
    )
    try:
        assert blank.model_ids == ("mine",)
        assert wins.model_ids == ("ops",)
    finally:
        await blank.aclose()
        await wins.aclose()
    with pytest.raises(ConfigError, match="MULTI_MODEL_FAILOVER_CONFIG"):
        MultiModelFailover.from_config(mine, env={"MULTI_MODEL_FAILOVER_CONFIG": "{nope"})


# -- the README's orchestrator snippets, as written, against real servers ---------------------


def _readme_function(name: str) -> Any:
    """The README snippet that defines ``name``, run as a module of its own."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for code in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        if f"def {name}(" in code:
            module = types.ModuleType(f"readme_{name}")
            exec(compile(code, "README.md", "exec"), module.__dict__)  # noqa: S102 - our README
            return getattr(module, name)
    raise AssertionError(f"no README snippet defines {name}()")


@pytest.mark.anyio
async def test_the_readme_tool_loop_fails_over_from_openai_to_anthropic_mid_conversation(
    make_two: tuple[FakeProvider, FakeProvider],
) -> None:
    """Turn one is answered by OpenAI with a tool call; the OpenAI server is then down and
    turn two, with the tool's result, goes to Anthropic, translated."""
    agent_turn = _readme_function("agent_turn")
    openai_server, anthropic_server = make_two
    ask = openai_tool_calls([("call_abc123", "get_weather", {"city": "Paris"})])
    openai_server.script(
        OPENAI_CHAT, Reply(body=ask), then=Reply(500, {"error": {"message": "down"}})
    )
    anthropic_server.script(ANTHROPIC_CHAT, Reply(body=anthropic_message("18 C in Paris.")))
    primary, fallback = _openai(openai_server), _anthropic(anthropic_server)
    fo = MultiModelFailover({"oa": primary, "an": fallback}, ONE_TRY)
    try:
        assert await agent_turn(fo, "Weather in Paris?") == "18 C in Paris."
    finally:
        await fo.aclose()
        await primary.aclose()
        await fallback.aclose()
    (turn_two,) = _bodies(anthropic_server, ANTHROPIC_CHAT)
    assert turn_two["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_abc123", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_abc123", "content": "18 C in Paris"}
            ],
        },
    ]  # fmt: skip
    assert turn_two["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert "tool_choice" not in turn_two


@pytest.fixture
def make_two() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    one, two = FakeProvider().start(), FakeProvider().start()
    yield one, two
    one.stop()
    two.stop()


@pytest.mark.anyio
async def test_the_readme_structured_output_runs_on_anthropic_through_a_forced_tool(
    provider: FakeProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    triage = _readme_function("triage")
    forced = anthropic_tool_use([("toolu_9", "triage", {"severity": "high", "summary": "db"})])
    provider.script(ANTHROPIC_CHAT, Reply(body=forced))
    client = _anthropic(provider)
    fo = MultiModelFailover([client], ONE_TRY)
    try:
        assert await triage(fo, "the database is down") == {"severity": "high", "summary": "db"}
    finally:
        await fo.aclose()
        await client.aclose()
    assert capsys.readouterr().out.split() == ["an", "12", "5"]
    (body,) = _bodies(provider, ANTHROPIC_CHAT)
    assert body["tool_choice"] == {"type": "tool", "name": "triage"}
    assert body["temperature"] == 0
    assert [tool["name"] for tool in body["tools"]] == ["triage"]


def test_the_readme_sync_snippet_runs_against_an_openai_server(
    provider: FakeProvider, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    summarise = _readme_function("summarise")
    usage = sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    events = openai_events(["Post", "mortem"], done=False)
    events += (sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), usage)
    provider.script(
        OPENAI_CHAT,
        Reply(body=openai_completion("Summary.")),
        Reply(events=(*events, sse("[DONE]"))),
    )
    provider.script("/models", then=Reply(body={"object": "list", "data": []}))
    settings = {ROOT_KEY: {"clients": [{"id": "primary", "kind": "openai", "model": "gpt",
                                        "base_url": provider.url, "probe": "models",
                                        "price": {"input": 0.15, "output": 0.6}}]}}  # fmt: skip
    summarise(settings, "the outage")
    out = capsys.readouterr().out
    assert out.startswith("Summary.\nPostmortem")
    assert "primary Usage(input_tokens=4, output_tokens=2)" in out
    assert float(out.split()[-1]) == pytest.approx((11 * 0.15 + 7 * 0.6 + 4 * 0.15 + 2 * 0.6) / 1e6)
    call, stream = _bodies(provider, OPENAI_CHAT)
    assert call["max_tokens"] == 300
    assert "temperature" not in call
    assert (stream["temperature"], stream["stream"]) == (0.2, True)
    assert "max_tokens" not in stream


# -- SyncMultiModelFailover ------------------------------------------------------------------------


class _Endless:
    """Streams ``a`` then waits forever; ``released`` once its stream is closed."""

    model_id = "endless"

    def __init__(self) -> None:
        self.released = threading.Event()

    async def call(self, prompt: str) -> str:
        return "a"

    def stream(self, prompt: str) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        try:
            yield "a"
            await anyio.sleep_forever()
            yield "never"  # pragma: no cover
        finally:
            self.released.set()

    async def health_check(self) -> bool:
        return True


def _interrupt_main_thread_after(seconds: float) -> threading.Thread:
    main = threading.main_thread().ident
    assert threading.current_thread() is threading.main_thread()
    assert main is not None

    def interrupt() -> None:
        time.sleep(seconds)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def test_a_sync_stream_interrupted_by_ctrl_c_releases_the_model_on_close(backend: str) -> None:
    model = _Endless()
    fo = SyncMultiModelFailover([model], ONE_TRY, backend=backend)
    try:
        stream = fo.stream("hi", timeout=30)
        assert next(stream) == "a"
        interrupter = _interrupt_main_thread_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            next(stream)
        interrupter.join()
        stream.close()
        released = model.released.wait(1)
        cancelled = _wait_until(lambda: fo.metrics().calls_cancelled == 1, 0.5)
    finally:
        fo.close(grace=0)
    assert released, "the model's stream is still open"
    assert cancelled


class _Hang:
    model_id = "hang"

    def __init__(self) -> None:
        self.entered = threading.Event()

    async def call(self, prompt: str) -> str:
        self.entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def health_check(self) -> bool:
        return True


def test_sync_metrics_answer_at_once_while_closing(backend: str) -> None:
    hang = _Hang()
    fo = SyncMultiModelFailover([hang], ONE_TRY, backend=backend)
    caller = threading.Thread(target=_ignore_errors, args=(fo.call, "hi"))
    closer = threading.Thread(target=lambda: fo.close(grace=1.5))
    caller.start()
    assert hang.entered.wait(5)
    closer.start()
    try:
        assert _wait_until(lambda: fo.closed)
        time.sleep(0.1)
        started = time.monotonic()
        metrics = fo.metrics()
        took = time.monotonic() - started
    finally:
        closer.join(10)
        caller.join(10)
    assert metrics.calls == 1
    assert took < 0.5, f"metrics() took {took:.2f}s while closing"


def test_an_http_client_given_to_the_sync_constructor_can_be_closed(
    provider: FakeProvider, backend: str
) -> None:
    provider.script(OPENAI_CHAT, then=Reply(body=openai_completion("hi")))
    held = [_openai(provider)]
    with SyncMultiModelFailover(held, ONE_TRY, backend=backend) as fo:
        assert fo.call("hello").text == "hi"
    closed = held[0].closed
    if not closed:
        try:
            anyio.run(held[0].aclose, backend=backend)  # the one way a sync caller has
            closed = held[0].closed
        except RuntimeError:
            closed = False
    del fo
    with warnings.catch_warnings():  # what leaked, collected here rather than in a later test
        warnings.simplefilter("ignore", ResourceWarning)
        held.clear()
        gc.collect()
    assert closed


def _new_non_daemon_threads(before: set[int]) -> list[str]:
    return [t.name for t in threading.enumerate() if t.ident not in before and not t.daemon]


def test_sync_threads_with_their_own_params_and_streams_over_http_never_mix(
    provider: FakeProvider, backend: str
) -> None:
    """Sixteen threads stream at once through one configured Anthropic client, each with a
    temperature of its own and half of them with tools: each request carries its own
    options only (over the configured top_k), each answer reaches its own thread, the log
    replays to the live view, and closing leaves no thread behind."""
    events = (
        sse({"type": "message_start", "message": {"id": "m", "content": [],
                                                  "usage": {"input_tokens": 3}}}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "streamed"}}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 2}}),
        sse({"type": "message_stop"}),
    )  # fmt: skip
    provider.script(ANTHROPIC_CHAT, then=Reply(events=events))
    provider.script("/v1/models", then=Reply(body={"data": []}))
    before = {t.ident for t in threading.enumerate() if t.ident is not None}
    document = {ROOT_KEY: {"clients": [{"id": "an", "kind": "anthropic", "model": "claude",
                                        "base_url": provider.url, "params": {"top_k": 5},
                                        "probe": "models",
                                        "price": {"input": 1.0, "output": 2.0}}]}}  # fmt: skip
    results: list[object] = [None] * 16

    def work(i: int) -> None:
        params: dict[str, Any] = {"temperature": i / 20}
        if i % 2:
            params["tools"] = [WEATHER]
        try:
            with fo.stream(f"q{i}", params=params) as stream:
                results[i] = ("".join(stream), stream.outcome)
        except BaseException as exc:
            results[i] = exc

    with SyncMultiModelFailover.from_config(document, env={}, backend=backend) as fo:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        live = fo.metrics()
    for result in results:
        assert isinstance(result, tuple), result
        assert result[0] == "streamed"
        assert result[1].usage == Usage(input_tokens=3, output_tokens=2)
    for body in _bodies(provider, ANTHROPIC_CHAT):
        i = int(body["messages"][0]["content"][1:])
        assert body["temperature"] == i / 20
        assert body["top_k"] == 5
        assert ("tools" in body) == bool(i % 2)
        assert "seed" not in body
    assert (live.input_tokens, live.output_tokens) == (48, 32)
    assert live.cost == pytest.approx(16 * (3 + 4) / 1e6)
    assert replay(fo.event_store).metrics == fo.metrics()
    assert _wait_until(lambda: not _new_non_daemon_threads(before))


def test_a_sync_stream_dropped_unclosed_is_cancelled_and_releases_the_model(
    backend: str,
) -> None:
    model = _Endless()
    with SyncMultiModelFailover([model], ONE_TRY, backend=backend) as fo:
        held = [fo.stream("hi", timeout=30)]
        assert next(held[0]) == "a"
        held.clear()  # no close(), no with: the iterator is garbage
        gc.collect()
        assert model.released.wait(3), "the dropped stream still holds the model"
        assert _wait_until(lambda: fo.metrics().calls_cancelled == 1)
        assert fo.call("next") == "a"
    assert replay(fo.event_store).metrics == fo.metrics()
    assert _types(fo)[-1] == "engine_stopped"


def test_a_sync_call_after_close_or_during_it_is_refused_and_never_recorded(backend: str) -> None:
    hang = _Hang()
    fo = SyncMultiModelFailover([hang], ONE_TRY, backend=backend)
    stream = fo.stream("made before close")
    results: list[object] = []

    def call() -> None:
        try:
            results.append(fo.call("in flight"))
        except BaseException as exc:
            results.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert hang.entered.wait(5)
    closer = threading.Thread(target=lambda: fo.close(grace=1))
    closer.start()
    assert _wait_until(lambda: fo.closed)
    started = time.monotonic()
    with pytest.raises(Exception, match="closed"):
        fo.call("during close", params={"seed": 1})
    assert time.monotonic() - started < 0.5  # refused at once, not after the grace
    closer.join(10)
    caller.join(10)
    with pytest.raises(Exception, match="closed"):
        next(stream)
    assert [type(r).__name__ for r in results] == ["EngineClosedError"]
    assert _types(fo).count("call_started") == 1
    assert replay(fo.event_store).metrics == fo.metrics()
