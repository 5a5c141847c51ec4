"""Edge cases of issue 14's stream recovery."""

from __future__ import annotations

from contextlib import aclosing, suppress
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    StreamInterruptedError,
    StreamSwitch,
    VirtualClock,
    replay,
)

pytestmark = pytest.mark.anyio


class Streamer:
    """Streams ``texts`` (each after ``gap`` virtual seconds; the first after ``first``),
    then raises ``then`` or ends."""

    def __init__(
        self,
        clock: VirtualClock | None,
        texts: list[str],
        *,
        then: BaseException | None = None,
        gap: float = 0.0,
        first: float = 0.0,
        prefill: bool = False,
    ) -> None:
        self.clock = clock
        self.texts = texts
        self.then = then
        self.gap = gap
        self.first = first
        self.supports_prefill = prefill
        self.prompts: list[Any] = []
        self.inside = 0
        self.most_inside = 0

    async def call(self, prompt: Any) -> str:
        return "".join(self.texts)

    async def health_check(self) -> bool:
        return True

    def stream(self, prompt: Any) -> Any:
        self.prompts.append(prompt)
        me = self

        async def chunks() -> Any:
            me.inside += 1
            me.most_inside = max(me.most_inside, me.inside)
            try:
                for i, text in enumerate(me.texts):
                    wait = me.first if i == 0 else me.gap
                    if wait and me.clock is not None:
                        await me.clock.sleep(wait)
                    await anyio.lowlevel.checkpoint()
                    yield text
                if me.then is not None:
                    if me.gap and me.clock is not None:
                        await me.clock.sleep(me.gap)
                    raise me.then
            finally:
                me.inside -= 1

        return chunks()


def _cut() -> ModelError:
    return ModelError("the stream ended before it was complete", kind="server")


async def _read(stream: Any) -> list[Any]:
    async with aclosing(stream) as chunks:
        return [chunk async for chunk in chunks]


async def test_a_content_filter_cut_mid_stream_is_not_sent_to_the_next_model() -> None:
    """Docs: `content_filter` -> `fail`: "no: the call fails fast"; "a content_filter refusal
    routed to another model sends the same refused request to a model with a weaker filter".
    With recovery="restart" a stream cut by a content filter after its first chunk is
    restarted on the next model."""
    primary = Streamer(
        None,
        ["Sure, here is how"],
        then=ModelError("the stream was cut by a content filter", kind="content_filter"),
    )
    secondary = Streamer(None, ["weaker filter answer"])
    fo = MultiModelFailover({"primary": primary, "secondary": secondary}, durability="buffered")
    async with fo:
        with pytest.raises(ModelError) as raised:
            await _read(fo.stream("how do I ...", recovery="restart"))
    assert raised.value.kind is ErrorKind.CONTENT_FILTER
    assert secondary.prompts == [], "the refused request was sent to the next model"


async def test_a_second_rescue_gets_the_calls_budget_not_more() -> None:
    """Docs: "A rescue gets the call's budget afresh for its first chunk". timeout=10: the
    second rescue starts at t=10, so its first chunk must come by t=20. The budget grows
    with each rescue (deadline - start is re-read after it was extended): here until t=25."""
    clock = VirtualClock()
    a = Streamer(clock, ["a1"], then=_cut(), gap=5)
    b = Streamer(clock, ["b1"], then=_cut(), gap=5)
    c = Streamer(clock, ["c1", "c2"], first=14)
    fo = MultiModelFailover(
        {"a": a, "b": b, "c": c},
        {"first_token_timeout": None, "attempt_timeout": None, "idle_timeout": None},
        clock=clock,
        durability="buffered",
    )
    outcome: list[Any] = []
    async with clock.autojump():
        try:
            got = await _read(fo.stream("hi", timeout=10, recovery="restart"))
            outcome.append(f"served at t={clock()}: {got!r}")
        except StreamInterruptedError:
            pass
        finally:
            await fo.aclose()
    assert not outcome, outcome[0]


async def test_a_rescue_onto_a_trial_client_respects_the_trial_slot() -> None:
    """Order [a (healthy), b (unhealthy, its trial admitted)]. The stream's trial slot on b is
    released at a's first chunk; another call then takes b's trial. When a breaks, the
    restart goes to b as a trial without a slot: two trials on b at once."""
    clock = VirtualClock()
    go = anyio.Event()

    class Holding(Streamer):
        def stream(self, prompt: Any) -> Any:
            self.prompts.append(prompt)
            me = self

            async def chunks() -> Any:
                me.inside += 1
                me.most_inside = max(me.most_inside, me.inside)
                try:
                    await go.wait()
                    yield "b-answer"
                finally:
                    me.inside -= 1

            return chunks()

        async def call(self, prompt: Any) -> str:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            try:
                await go.wait()
                return "b-call"
            finally:
                self.inside -= 1

    a_break = anyio.Event()

    class Breaking(Streamer):
        def stream(self, prompt: Any) -> Any:
            async def chunks() -> Any:
                yield "a1"
                await a_break.wait()
                raise _cut()

            return chunks()

        async def call(self, prompt: Any) -> str:
            raise ModelError("HTTP 503", kind="server")

    a = Breaking(clock, [])
    b = Holding(clock, [])
    b_probe = {"ok": False}

    async def b_health() -> bool:
        return b_probe["ok"]

    b.health_check = b_health  # type: ignore[method-assign]
    fo = MultiModelFailover(
        {"a": a, "b": b}, {"max_attempts": 1}, clock=clock, durability="buffered"
    )
    try:
        await fo.check_health()
        assert fo.states["b"] is HealthState.UNHEALTHY
        clock.advance(5)
        async with anyio.create_task_group() as group:

            async def read() -> None:
                with suppress(ModelError):
                    await _read(fo.stream("hi", recovery="restart"))

            group.start_soon(read)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()

            async def other() -> None:
                with suppress(ModelError):
                    await fo.call("x")

            group.start_soon(other)  # a fails (503): b is tried as this call's trial
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            a_break.set()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            go.set()
        trials = [e for e in fo.event_store.read() if e.type == "attempt_started" and e.trial]
        assert b.most_inside == 1, f"{b.most_inside} trials at once on b ({len(trials)} trials)"
    finally:
        await fo.aclose()


async def test_continue_with_a_chat_prompt_keeps_the_messages_and_adds_the_prefill() -> None:
    primary = Streamer(None, ["Hello "], then=_cut())
    secondary = Streamer(None, ["world"], prefill=True)
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "greet"}]
    fo = MultiModelFailover({"p": primary, "s": secondary}, durability="buffered")
    async with fo:
        got = await _read(fo.stream(prompt, recovery="continue"))
    assert [c for c in got if isinstance(c, str)] == ["Hello ", "world"]
    sent = secondary.prompts[0]
    assert sent[:2] == prompt
    assert sent[2] == {"role": "assistant", "content": "Hello "}
    assert prompt == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "greet"},
    ]
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_a_client_whose_stream_raises_synchronously_fails_over() -> None:
    class Raises:
        async def call(self, prompt: Any) -> str:
            return "x"

        async def health_check(self) -> bool:
            return True

        def stream(self, prompt: Any) -> Any:
            raise ModelError("HTTP 503 before anything", kind="server", status=503)

    secondary = Streamer(None, ["ok"])
    fo = MultiModelFailover({"p": Raises(), "s": secondary}, durability="buffered")
    async with fo:
        got = await _read(fo.stream("hi"))
    assert got == ["ok"]
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_no_prompt_text_reaches_the_log_through_a_prefill_refusal() -> None:
    prompt = "my very secret prompt text that must never be stored"

    class RefusesEcho(Streamer):
        def stream(self, p: Any) -> Any:
            self.prompts.append(p)

            async def chunks() -> Any:
                await anyio.lowlevel.checkpoint()
                raise ModelError(f"HTTP 400 bad prefill: {p!r}", kind="bad_request", status=400)
                yield ""  # pragma: no cover

            return chunks()

    primary = Streamer(None, [f"You said: {prompt}. "], then=_cut())
    secondary = RefusesEcho(None, [], prefill=True)
    fo = MultiModelFailover({"p": primary, "s": secondary}, durability="buffered")
    async with fo:
        with pytest.raises(ModelError):
            await _read(fo.stream(prompt, recovery="continue"))
    for event in fo.event_store.read():
        assert "secret prompt" not in repr(event), event


async def test_empty_string_chunks_then_a_break_with_restart() -> None:
    primary = Streamer(None, ["", ""], then=_cut())
    secondary = Streamer(None, ["whole"])
    fo = MultiModelFailover({"p": primary, "s": secondary}, durability="buffered")
    async with fo:
        got = await _read(fo.stream("hi", recovery="restart"))
    switches = [c for c in got if isinstance(c, StreamSwitch)]
    assert len(switches) == 1
    assert switches[0].discarded_chars == 0
    assert got[-1] == "whole"
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_restart_with_nothing_left_in_the_order_raises_interrupted() -> None:
    primary = Streamer(None, ["Hel"], then=_cut())
    fo = MultiModelFailover({"p": primary}, durability="buffered")
    async with fo:
        with pytest.raises(StreamInterruptedError):
            await _read(fo.stream("hi", recovery="restart"))
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_restart_onto_a_model_put_into_maintenance_mid_stream() -> None:
    gate = anyio.Event()

    class Slow(Streamer):
        def stream(self, prompt: Any) -> Any:
            async def chunks() -> Any:
                yield "Hel"
                await gate.wait()
                raise _cut()

            return chunks()

    secondary = Streamer(None, ["never"])
    fo = MultiModelFailover({"p": Slow(None, []), "s": secondary}, durability="buffered")
    async with fo:
        stream = fo.stream("hi", recovery="restart")
        async with aclosing(stream):
            assert await stream.__anext__() == "Hel"
            await fo.set_maintenance("s", True)
            gate.set()
            with pytest.raises(StreamInterruptedError):
                await stream.__anext__()
    assert secondary.prompts == []
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_idle_and_first_token_timeouts_off() -> None:
    primary = Streamer(None, ["a", "b"])
    fo = MultiModelFailover(
        {"p": primary},
        {"idle_timeout": None, "first_token_timeout": None},
        durability="buffered",
    )
    async with fo:
        assert await _read(fo.stream("hi")) == ["a", "b"]
        assert fo.metrics().calls_succeeded == 1


async def test_engine_closed_while_rescue_waits_records_one_terminal_event() -> None:
    clock = VirtualClock()
    primary = Streamer(clock, ["Hel"], then=_cut())
    secondary = Streamer(clock, ["x"], first=100)
    fo = MultiModelFailover(
        {"p": primary, "s": secondary},
        {"first_token_timeout": None},
        clock=clock,
        durability="buffered",
    )
    errors: list[BaseException] = []
    async with clock.autojump(), anyio.create_task_group() as group:

        async def read() -> None:
            try:
                await _read(fo.stream("hi", recovery="restart"))
            except BaseException as exc:
                errors.append(exc)

        group.start_soon(read)
        await clock.sleep(5)
        await fo.aclose(grace=1)
    assert errors
    assert isinstance(errors[0], RuntimeError), errors
    terminal = [
        e.type
        for e in fo.event_store.read()
        if e.type in ("call_succeeded", "call_failed", "call_cancelled")
    ]
    assert terminal == ["call_cancelled"], terminal
    assert [e.type for e in fo.event_store.read()][-1] == "engine_stopped"
    assert replay(fo.event_store).metrics == fo.metrics()
