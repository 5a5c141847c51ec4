"""Per-call request options (``params``) and the token usage and cost of each attempt.

The engine hands ``params`` to a client that says it takes them, never silently drops them
for one that does not, and records the tokens each answer reported (and their cost, with a
price) on its attempt's event, so that live metrics and a replay of the log agree.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    ModelError,
    ModelResponse,
    replay,
)
from devs.risks.multi_model_failover.core.pricing import (
    MAX_PRICE,
    MAX_TOKENS,
    Price,
    prices_by_model,
    response_tokens,
    tokens_of,
)
from devs.risks.multi_model_failover.core.registry import ClientRegistry
from devs.risks.multi_model_failover.core.responses import ToolCall, Usage

from .fakes import FakeModelClient, always, engine, failing

pytestmark = pytest.mark.anyio


class ParamsClient:
    """An async client that takes per-call params and records what each call was given."""

    def __init__(self, answer: Any = "ok", *, fail_first: int = 0) -> None:
        self.answer = answer
        self.fail_first = fail_first
        self.seen: list[dict[str, Any] | None] = []

    async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> Any:
        self.seen.append(None if params is None else dict(params))
        if len(self.seen) <= self.fail_first:
            raise ModelError("overloaded", kind="server")
        return self.answer

    async def health_check(self) -> bool:
        return True


class SyncParamsClient:
    """A plain sync client taking ``**options``; records its thread and options."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.threads: list[int] = []

    def call(self, prompt: str, **options: Any) -> str:
        self.seen.append(options)
        self.threads.append(threading.get_ident())
        return "sync ok"

    def health_check(self) -> bool:
        return True


class Chunks:
    """A client's stream of text chunks; like the bundled clients' streams, it tells its
    ``usage`` once it has ended."""

    def __init__(self, *chunks: str) -> None:
        self._chunks = list(chunks)
        self.usage: Usage | None = None

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> str:
        if not self._chunks:
            self.usage = Usage(input_tokens=7, output_tokens=2)
            raise StopAsyncIteration
        return self._chunks.pop(0)


class StreamingClient:
    """Streams two chunks; records the params each stream was opened with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any] | None] = []

    async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> str:
        raise AssertionError("a streaming client's stream is used")

    def stream(self, prompt: str, params: Mapping[str, Any] | None = None) -> Chunks:
        self.seen.append(None if params is None else dict(params))
        return Chunks("hel", "lo")

    async def health_check(self) -> bool:
        return True


# -- params reach the client, for this call only ---------------------------------------------


async def test_params_reach_the_client_and_never_leak_into_the_next_call() -> None:
    client = ParamsClient()
    async with engine({"primary": client}) as fo:
        await fo.call("hi", params={"temperature": 0.2, "tools": [{"type": "function"}]})
        await fo.call("hi again")
        await fo.call("and again", params={})
    assert client.seen == [{"temperature": 0.2, "tools": [{"type": "function"}]}, None, None]


async def test_every_retry_and_failover_sends_the_params_the_call_started_with() -> None:
    options = {"temperature": 0.0}

    class ChangesTheCallersDict(ParamsClient):
        async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> Any:
            options["temperature"] = 1.0  # the caller changing its dict meanwhile changes nothing
            return await super().call(prompt, params)

    primary, secondary = ChangesTheCallersDict(fail_first=5), ParamsClient("from secondary")
    async with engine({"primary": primary, "secondary": secondary}) as fo:
        assert await fo.call("hi", params=options) == "from secondary"
    assert primary.seen == [{"temperature": 0.0}] * 2
    assert secondary.seen == [{"temperature": 0.0}]


async def test_the_client_gets_a_read_only_view_of_the_params() -> None:
    class Mutating(ParamsClient):
        async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> Any:
            assert params is not None
            params["temperature"] = 2.0  # type: ignore[index]
            return "never"

    options = {"temperature": 0.5}
    async with engine({"m": Mutating()}, {"max_attempts": 1}) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call("hi", params=options)
    assert "does not support item assignment" in caught.value.attempts[0].message
    assert options == {"temperature": 0.5}


async def test_a_sync_client_gets_the_params_on_its_worker_thread() -> None:
    client = SyncParamsClient()
    async with engine({"sync": client}) as fo:
        assert await fo.call("hi", params={"seed": 7}) == "sync ok"
        await fo.call("hi")
    assert client.seen == [{"params": {"seed": 7}}, {}]
    assert threading.get_ident() not in client.threads


async def test_a_client_that_takes_no_params_is_never_sent_the_request_without_them() -> None:
    plain = FakeModelClient(always("plain answer"), model_id="plain")
    backup = ParamsClient("backup answer")
    async with engine([plain, backup]) as fo:
        with pytest.raises(ModelError) as caught:
            await fo.call("hi", params={"tools": [], "temperature": 0})
        # Without params it answers as always.
        assert await fo.call("hi") == "plain answer"
    error = caught.value
    assert error.kind is ErrorKind.BAD_REQUEST
    assert "'plain' takes no per-call params (given: temperature, tools)" in str(error)
    assert plain.calls == ["hi"]  # only the call without params reached it
    assert backup.seen == []  # bad_request fails the call fast: no failover
    failed = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert [(e.model_id, e.error_kind) for e in failed] == [("plain", ErrorKind.BAD_REQUEST)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("temperature=0", "params must be a mapping of request options, got str"),
        ([("temperature", 0)], "params must be a mapping of request options, got list"),
        ({1: "x"}, "params keys must be str, got 1"),
    ],
)
async def test_bad_params_are_a_type_error_before_anything_is_recorded(
    params: Any, message: str
) -> None:
    client = ParamsClient()
    async with engine({"m": client}) as fo:
        with pytest.raises(TypeError, match=message):
            await fo.call("hi", params=params)
        with pytest.raises(TypeError, match=message):
            fo.stream("hi", params=params)
        assert not [e for e in fo.event_store.read() if e.type == "call_started"]
    assert client.seen == []


async def test_a_stream_hands_the_params_to_the_clients_stream() -> None:
    client = StreamingClient()
    async with engine({"s": client}) as fo:
        stream = fo.stream("hi", params={"max_tokens": 5})
        assert [chunk async for chunk in stream] == ["hel", "lo"]
    assert client.seen == [{"max_tokens": 5}]


async def test_a_stream_refuses_a_client_whose_stream_takes_no_params() -> None:
    class OldStreaming(StreamingClient):
        def stream(self, prompt: str) -> Chunks:  # type: ignore[override]
            return Chunks("never")

    async with engine({"old": OldStreaming()}) as fo:
        with pytest.raises(ModelError, match="'old' takes no per-call params"):
            async for _ in fo.stream("hi", params={"stop": ["."]}):
                pass


async def test_a_client_without_stream_answers_a_stream_with_params_in_one_chunk() -> None:
    client = ParamsClient("whole answer")
    async with engine({"m": client}) as fo:
        chunks = [chunk async for chunk in fo.stream("hi", params={"seed": 1})]
    assert chunks == ["whole answer"]
    assert client.seen == [{"seed": 1}]


# -- usage and cost ---------------------------------------------------------------------------


def response(input_tokens: int | None, output_tokens: int | None) -> ModelResponse:
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return ModelResponse(text="ok", model="m-1", usage=usage)


async def test_usage_and_cost_are_recorded_per_attempt_and_folded_per_model() -> None:
    cheap = FakeModelClient(always(response(1000, 200)), model_id="cheap")
    async with engine([cheap], prices={"cheap": {"input": 3.0, "output": 15.0}}) as fo:
        await fo.call("one")
        await fo.call("two")
        live = fo.metrics()
    succeeded = [e for e in fo.event_store.read() if e.type == "attempt_succeeded"]
    assert [(e.input_tokens, e.output_tokens) for e in succeeded] == [(1000, 200)] * 2
    assert succeeded[0].cost == pytest.approx(0.006)  # 1000 * 3/1M + 200 * 15/1M
    model = live.by_model["cheap"]
    assert (model.input_tokens, model.output_tokens) == (2000, 400)
    assert model.cost == pytest.approx(0.012)
    assert (live.input_tokens, live.output_tokens, live.cost) == (2000, 400, model.cost)
    assert replay(fo.event_store).metrics == live


async def test_without_a_price_tokens_are_counted_and_cost_stays_unknown() -> None:
    client = FakeModelClient(always({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}))
    async with engine({"m": client}) as fo:
        await fo.call("hi")
        figures = fo.metrics().by_model["m"]
    assert (figures.input_tokens, figures.output_tokens, figures.cost) == (12, 3, None)


async def test_an_answer_without_usage_records_no_tokens() -> None:
    async with engine(
        {"m": FakeModelClient(always("text only"))}, prices={"m": Price(input=1, output=1)}
    ) as fo:
        await fo.call("hi")
        figures = fo.metrics()
    (event,) = [e for e in fo.event_store.read() if e.type == "attempt_succeeded"]
    assert (event.input_tokens, event.output_tokens, event.cost) == (None, None, None)
    assert (figures.input_tokens, figures.output_tokens, figures.cost) == (0, 0, None)


async def test_a_failed_attempt_is_billed_only_when_the_provider_reported_usage() -> None:
    reported = failing("server", usage=Usage(input_tokens=50, output_tokens=0))
    primary = FakeModelClient(reported, model_id="primary")
    silent = FakeModelClient(failing("server"), model_id="silent")
    backup = FakeModelClient(always(response(10, 5)), model_id="backup")
    prices = {name: Price(input=2.0, output=4.0) for name in ("primary", "silent", "backup")}
    async with engine([primary, silent, backup], {"max_attempts": 1}, prices=prices) as fo:
        await fo.call("hi")
        live = fo.metrics()
    assert live.by_model["primary"].input_tokens == 50
    assert live.by_model["primary"].cost == pytest.approx(50 * 2.0 / 1e6)
    assert live.by_model["silent"].cost is None
    assert live.by_model["silent"].input_tokens == 0
    assert live.cost == pytest.approx((50 * 2.0 + 10 * 2.0 + 5 * 4.0) / 1e6)
    assert replay(fo.event_store).metrics == live


async def test_a_streams_usage_is_recorded_when_it_ends() -> None:
    client = StreamingClient()
    async with engine({"s": client}, prices={"s": Price(input=1.0, output=1.0)}) as fo:
        async for _ in fo.stream("hi"):
            pass
        figures = fo.metrics().by_model["s"]
    assert (figures.input_tokens, figures.output_tokens) == (7, 2)
    assert figures.cost == pytest.approx(9 / 1e6)


@pytest.mark.parametrize(
    ("prices", "error", "message"),
    [
        ({"nobody": {"input": 1, "output": 1}}, ValueError, "unknown model id 'nobody'"),
        ({"m": {"input": -1, "output": 1}}, ValueError, r"prices\['m'\]: price input must be"),
        ({"m": {"input": 1}}, ValueError, r"prices\['m'\]: missing output"),
        ({"m": {"input": 1, "output": 1, "cache": 2}}, ValueError, "unknown key.*cache"),
        ({"m": {"input": "1", "output": 1}}, TypeError, "price input must be a number, got str"),
        ({"m": 3.0}, TypeError, r"prices\['m'\] must be a Price or a mapping"),
    ],
)
def test_bad_prices_are_refused_naming_the_model_and_key(
    prices: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        prices_by_model(prices, ClientRegistry({"m": FakeModelClient()}).check_known)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, (None, None)),
        (Usage(input_tokens=3, output_tokens=None), (3, None)),
        ({"input_tokens": 4, "output_tokens": 5}, (4, 5)),
        ({"prompt_tokens": 6, "completion_tokens": 7}, (6, 7)),
        ({"input_tokens": -1, "output_tokens": True}, (None, None)),
        ({"input_tokens": "9", "output_tokens": 2.5}, (None, None)),
        ("not usage", (None, None)),
    ],
)
def test_token_counts_are_read_only_when_they_are_counts(usage: object, expected: Any) -> None:
    assert tokens_of(usage) == expected


def test_a_responses_usage_is_found_on_an_attribute_or_a_key() -> None:
    assert response_tokens(response(1, 2)) == (1, 2)
    assert response_tokens({"usage": {"input_tokens": 8, "output_tokens": 9}}) == (8, 9)
    assert response_tokens("plain text") == (None, None)


# -- a stream's tool calls --------------------------------------------------------------------


async def test_a_streams_outcome_carries_the_tool_calls_its_client_assembled() -> None:
    call = ToolCall(id="call_1", name="lookup", arguments='{"city":"Oslo"}')

    class ToolChunks(Chunks):
        tool_calls = (call,)

    class ToolStreaming(StreamingClient):
        def stream(self, prompt: str, params: Mapping[str, Any] | None = None) -> Chunks:
            return ToolChunks()

    async with engine({"s": ToolStreaming()}) as fo:
        stream = fo.stream("hi", params={"tools": []})
        assert [chunk async for chunk in stream] == []
    assert stream.outcome is not None
    assert stream.outcome.tool_calls == (call,)


async def test_a_whole_answer_streamed_in_one_chunk_keeps_its_tool_calls() -> None:
    call = ToolCall(id="call_2", name="add", arguments='{"a":1}')
    answer = ModelResponse(text="", model="m", tool_calls=(call,), finish_reason="tool_calls")
    async with engine({"m": ParamsClient(answer)}) as fo:
        stream = fo.stream("hi")
        assert [chunk async for chunk in stream] == []
    assert stream.outcome is not None
    assert (stream.outcome.tool_calls, stream.outcome.finish_reason) == ((call,), "tool_calls")


# -- what a call spent, and bounds ------------------------------------------------------------


async def test_the_outcome_adds_up_what_every_attempt_of_the_call_spent() -> None:
    billed = FakeModelClient(failing("server", usage=Usage(input_tokens=40)), model_id="billed")
    backup = FakeModelClient(always(response(10, 5)), model_id="backup")
    prices = {"billed": Price(input=1.0, output=1.0), "backup": Price(input=2.0, output=4.0)}
    async with engine([billed, backup], {"max_attempts": 1}, prices=prices) as fo:
        outcome = await fo.call_with_outcome("hi")
        plain = await fo.call_with_outcome("again", params=None)
    assert (outcome.input_tokens, outcome.output_tokens) == (50, 5)
    assert outcome.cost == pytest.approx((40 * 1.0 + 10 * 2.0 + 5 * 4.0) / 1e6)
    assert plain.model_id == "backup"  # the billed primary fails every time


async def test_an_outcome_without_reported_usage_says_so() -> None:
    async with engine({"m": FakeModelClient(always("text"))}) as fo:
        outcome = await fo.call_with_outcome("hi")
    assert (outcome.input_tokens, outcome.output_tokens, outcome.cost) == (None, None, None)


class BreaksAfterUsage(Chunks):
    """Reports its input tokens at once (as Anthropic's message_start does), sends a chunk,
    then breaks."""

    def __init__(self) -> None:
        super().__init__("Hel")
        self.usage = Usage(input_tokens=25)

    async def __anext__(self) -> str:
        if not self._chunks:
            raise ModelError("overloaded", kind="server")
        return self._chunks.pop(0)


async def test_a_stream_that_broke_is_billed_what_it_had_reported() -> None:
    class Breaking(StreamingClient):
        def stream(self, prompt: str, params: Mapping[str, Any] | None = None) -> Chunks:
            return BreaksAfterUsage()

    async with engine({"s": Breaking()}, prices={"s": Price(input=1.0, output=1.0)}) as fo:
        with pytest.raises(ModelError):
            async for _ in fo.stream("hi"):
                pass
        live = fo.metrics()
    (failed,) = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert (failed.input_tokens, failed.cost) == (25, pytest.approx(25 / 1e6))
    assert live.input_tokens == 25
    assert replay(fo.event_store).metrics == live


async def test_a_streams_outcome_adds_up_the_whole_call() -> None:
    class Breaking(StreamingClient):
        def stream(self, prompt: str, params: Mapping[str, Any] | None = None) -> Chunks:
            return BreaksAfterUsage()

    clients = {"first": Breaking(), "second": StreamingClient()}
    async with engine(clients, prices={"second": Price(input=1.0, output=1.0)}) as fo:
        stream = fo.stream("hi", recovery="restart")
        async for _ in stream:
            pass
    assert stream.outcome is not None
    assert (stream.outcome.input_tokens, stream.outcome.output_tokens) == (25 + 7, 2)
    assert stream.outcome.cost == pytest.approx(9 / 1e6)  # only the priced model's part
    assert stream.outcome.usage == Usage(input_tokens=7, output_tokens=2)  # the serving one's


def test_a_count_no_answer_could_have_is_unknown() -> None:
    assert tokens_of({"input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS + 1}) == (
        MAX_TOKENS,
        None,
    )
    assert tokens_of({"prompt_tokens": 2**64}) == (None, None)


def test_a_price_is_bounded_so_that_no_sum_of_costs_overflows() -> None:
    with pytest.raises(ValueError, match="price input must be a number from 0 to 1e"):
        Price(input=MAX_PRICE * 10, output=1.0)
    total = Price(input=MAX_PRICE, output=MAX_PRICE).cost((MAX_TOKENS, MAX_TOKENS))
    assert total is not None
    assert math.isfinite(total * 10**9)
