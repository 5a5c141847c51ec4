"""Never executed: code as a consumer would write it, type-checked with ``mypy --strict``.

``tests/test_public_api.py`` runs mypy on this file; an error here is an error in the public
types, not in this file. ``rejected.py`` beside it holds the mistakes mypy must refuse.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any, assert_type

import anyio

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    CallOutcome,
    ChatMessage,
    ConfigError,
    DeadlineExceededError,
    ErrorKind,
    HealthPolicy,
    HealthState,
    Metrics,
    ModelClient,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    Params,
    Price,
    Prompt,
    RetryPolicy,
    Snapshot,
    SQLiteEventStore,
    StreamOutcome,
    StreamSwitch,
    SyncMultiModelFailover,
    SyncStream,
    ToolCall,
    Usage,
    replay,
)
from devs.risks.multi_model_failover.adapters.clients import AnthropicClient, OpenAIClient


class AsyncClient:
    """An async client, the usual shape."""

    model_id = "async-model"

    async def call(self, prompt: Prompt) -> ModelResponse:
        text = prompt if isinstance(prompt, str) else str(prompt[-1]["content"])
        return ModelResponse(text=text.upper(), model=self.model_id)

    async def health_check(self) -> bool:
        return True


class SyncClient:
    """A blocking client: the engine runs it in a worker thread."""

    def call(self, prompt: Prompt) -> str:
        if not prompt:
            raise ModelError("empty prompt", kind=ErrorKind.BAD_REQUEST)
        raise ModelError("slow down", kind="rate_limited", retry_after=1.5)

    def health_check(self) -> bool:
        return True


def clients() -> list[ModelClient]:
    return [AsyncClient(), SyncClient()]


async def main() -> None:
    fo = MultiModelFailover(
        clients(),
        RetryPolicy(max_attempts=3, base_delay=0.1, jitter="none", call_budget=20.0),
        15,
        health_policy=HealthPolicy(degraded_after=1, unhealthy_after=2),
        event_store=None,
        sleep=anyio.sleep,
        clock=time.monotonic,
        rng=random.Random(7),
    )
    by_name = MultiModelFailover(
        {"primary": AsyncClient(), "fallback": SyncClient()},
        {"max_attempts": 2, "jitter": "full"},
        health_policy={"probe_timeout": 2.0},
        event_store="var/failover/events.sqlite3",
    )
    answer: Any = await fo.call("hello", timeout=5.0)
    print(answer)
    states: dict[str, HealthState] = await fo.check_health()
    live: dict[str, HealthState] = fo.states
    order: list[str] = fo.rotation
    await fo.set_maintenance("async-model", True, reason="provider upgrade")
    await fo.set_maintenance("async-model", False)
    metrics: Metrics = fo.metrics()
    totals: tuple[int, int, int, float] = (
        metrics.calls,
        metrics.failovers,
        metrics.by_model["async-model"].attempts,
        metrics.backoff_seconds,
    )
    for event in fo.event_store.read():
        stamp: datetime = event.at
        print(event.type, event.seq, stamp)
    snapshot: Snapshot = replay(fo.event_store)
    print(snapshot.metrics == metrics, snapshot.states["async-model"].state, states, live, order)
    print(replay("var/failover/events.sqlite3").metrics.calls, totals)
    try:
        await by_name.call("hi")
    except DeadlineExceededError as exc:
        print("out of time", exc.attempts)
    except AllModelsFailedError as exc:
        for attempt in exc.attempts:
            kind: ErrorKind = attempt.error_kind
            print(attempt.model_id, kind.value, attempt.message)
    except ModelError as exc:
        retry_after: float | None = exc.retry_after
        print(exc.kind, retry_after)
    async with by_name:
        await by_name.call("inside the health loop")
    await fo.aclose()
    try:
        configured = MultiModelFailover.from_config("config/risks.yaml")
    except ConfigError as exc:
        print(exc)
    else:
        await configured.aclose()
    with SQLiteEventStore("var/failover/events.sqlite3", durability="power") as store:
        print(replay(store).audit)


anyio.run(main)


async def stream_text(fo: MultiModelFailover) -> tuple[str, StreamOutcome | None]:
    """A stream's chunks are text; with recovery they may also be a ``StreamSwitch``."""
    parts: list[str] = []
    async with fo.stream("Summarise", timeout=20) as stream:
        async for chunk in stream:
            assert_type(chunk, str)
            parts.append(chunk)
    async with fo.stream("Summarise", recovery="restart") as rescued:
        async for item in rescued:
            assert_type(item, str | StreamSwitch)
            if isinstance(item, StreamSwitch):
                if item.mode == "restart":
                    parts.clear()
                continue
            parts.append(item)
    outcome = rescued.outcome
    if outcome is not None and outcome.usage is not None:
        tokens: int | None = outcome.usage.output_tokens
        del tokens
    return "".join(parts), stream.outcome


class OptionsClient:
    """A client that takes per-call options and reports its usage."""

    model_id = "options-model"

    async def call(self, prompt: Prompt, params: Params | None = None) -> ModelResponse:
        text = prompt if isinstance(prompt, str) else str(prompt[-1].get("content", ""))
        if params is not None and params.get("max_tokens") == 0:
            raise ModelError("nothing to say", kind="bad_request", usage=Usage(input_tokens=3))
        return ModelResponse(text=text, model="m", usage=Usage(input_tokens=3, output_tokens=1))

    async def health_check(self) -> bool:
        return True


async def orchestrate() -> None:
    """Per-call options, tools, usage and cost, configuration as data."""
    options: list[ModelClient] = [OptionsClient()]
    fo = MultiModelFailover(options, prices={"options-model": Price(input=3.0, output=15.0)})
    priced = MultiModelFailover(options, prices={"options-model": {"input": 1.0, "output": 2.0}})
    messages: list[ChatMessage] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    response: ModelResponse = await fo.call(messages, params={"tools": tools, "temperature": 0})
    calls: tuple[ToolCall, ...] = response.tool_calls
    for tool_call in calls:
        print(tool_call.id, tool_call.name, tool_call.arguments)
    outcome: CallOutcome = await fo.call_with_outcome("hi", timeout=5, params={"seed": 7})
    print(outcome.model_id, outcome.response)
    async with fo.stream(messages, params={"max_tokens": 50}) as stream:
        async for chunk in stream:
            assert_type(chunk, str)
    metrics = fo.metrics()
    cost: float | None = metrics.cost
    tokens: int = metrics.input_tokens + metrics.by_model["options-model"].output_tokens
    print(cost, tokens, metrics.by_model["options-model"].cost)
    document = {"multi_model_failover": {"clients": [{"id": "a", "kind": "callable"}]}}
    configured = MultiModelFailover.from_config(document, env={}, sleep=anyio.sleep)
    assert_type(configured, MultiModelFailover)
    openai = OpenAIClient(model="gpt-4o-mini", base_url="https://api.openai.com/v1")
    assert_type(await openai.call("hi", params={"max_tokens": 5}), ModelResponse)
    claude = AnthropicClient(model="claude-haiku-4-5", base_url="https://api.anthropic.com")
    assert_type(await claude.call(messages), ModelResponse)
    for engine in (fo, priced, configured):
        await engine.aclose()


def threads() -> None:
    """The same from code that is not async."""
    with SyncMultiModelFailover([OptionsClient()], {"max_attempts": 1}, backend="trio") as fo:
        answer: Any = fo.call("hi", timeout=5, params={"temperature": 0})
        outcome: CallOutcome = fo.call_with_outcome("hi", params={"seed": 1})
        stream = fo.stream("hi", params={"max_tokens": 10})
        assert_type(stream, SyncStream[str])
        for chunk in stream:
            assert_type(chunk, str)
        with fo.stream("hi", recovery="restart") as rescued:
            for item in rescued:
                assert_type(item, str | StreamSwitch)
        finished: StreamOutcome | None = rescued.outcome
        fo.set_maintenance("options-model", True, reason="upgrade")
        states: dict[str, HealthState] = fo.check_health()
        order: list[str] = fo.rotation
        metrics: Metrics = fo.metrics()
        print(answer, outcome, finished, states, order, metrics.cost, fo.states)
    configured = SyncMultiModelFailover.from_config("config/risks.yaml", durability="power")
    assert_type(configured, SyncMultiModelFailover)
    configured.close(grace=1.0)
