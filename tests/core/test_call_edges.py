"""Calls and probes at their edges: maintenance set mid-call, cancellations nobody asked for,
the client's own exceptions kept, odd answers from clients, probes that never return."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    DeadlineExceededError,
    ErrorKind,
    FailReason,
    HealthState,
    ModelError,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.core.streaming import StreamInterruptedError

from .fakes import FakeClock, FakeModelClient, always, engine, failing, ids

pytestmark = pytest.mark.anyio


def types_of(fo: MultiModelFailover) -> list[str]:
    return [e.type for e in fo.event_store.read()]


# -- maintenance set while a call is in flight ------------------------------------------------


async def test_a_model_put_into_maintenance_mid_call_is_not_failed_over_to() -> None:
    clock = FakeClock()
    primary = FakeModelClient(failing("server"), model_id="primary")
    secondary = FakeModelClient(always("from secondary"), model_id="secondary")
    tertiary = FakeModelClient(always("from tertiary"), model_id="tertiary")
    async with engine([primary, secondary, tertiary], {"max_attempts": 2}, clock=clock) as fo:

        async def operator(seconds: float) -> None:
            await fo.set_maintenance("secondary", True, reason="provider incident")

        clock.on_sleep = operator  # during primary's backoff, before the failover
        assert await fo.call("hi") == "from tertiary"
    assert secondary.calls == []
    assert ids(fo.event_store.read(), "failover", "to_model") == ["tertiary"]


async def test_a_model_put_into_maintenance_during_its_backoff_is_not_retried() -> None:
    clock = FakeClock()
    primary = FakeModelClient(failing("server"), model_id="primary")
    secondary = FakeModelClient(always("from secondary"), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 3}, clock=clock) as fo:

        async def operator(seconds: float) -> None:
            await fo.set_maintenance("primary", True)

        clock.on_sleep = operator
        assert await fo.call("hi") == "from secondary"
    assert len(primary.calls) == 1


async def test_every_model_put_into_maintenance_mid_call_fails_the_call_cleanly() -> None:
    clock = FakeClock()
    primary = FakeModelClient(failing("server"), model_id="primary")
    secondary = FakeModelClient(always("from secondary"), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 2}, clock=clock) as fo:

        async def operator(seconds: float) -> None:
            await fo.set_maintenance("secondary", True)

        clock.on_sleep = operator
        with pytest.raises(AllModelsFailedError):
            await fo.call("hi")
    assert secondary.calls == []


# -- cancellations nobody asked for -----------------------------------------------------------


def foreign_cancel() -> Any:
    """A client call that awaits something another task cancelled (asyncio), or raises
    asyncio's CancelledError itself (on trio it can only be foreign)."""

    async def call(prompt: str) -> str:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise asyncio.CancelledError from None
        future = loop.create_future()
        future.cancel()
        await future
        return "unreachable"

    return call


async def test_a_cancelled_error_nobody_asked_for_fails_over() -> None:
    primary = FakeModelClient(foreign_cancel(), model_id="primary")
    secondary = FakeModelClient(always("from secondary"), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 1}) as fo:
        assert await fo.call("hi") == "from secondary"
    types = types_of(fo)
    assert "call_cancelled" not in types
    assert "failover" in types


async def test_a_probe_raising_a_cancelled_error_nobody_asked_for_is_a_failed_probe() -> None:
    async def probe() -> bool:
        await foreign_cancel()("")
        return True

    primary = FakeModelClient(model_id="primary", probe=probe)
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        states = await fo.check_health()
    assert states["primary"] is HealthState.UNHEALTHY
    probes = [e for e in fo.event_store.read() if e.type == "health_probe"]
    outcomes = {p.model_id: p.ok for p in probes}  # type: ignore[attr-defined]
    assert outcomes == {"primary": False, "secondary": True}


async def test_the_callers_own_cancellation_is_still_a_cancel() -> None:
    async def slow(prompt: str) -> str:
        await anyio.sleep_forever()
        return "never"

    async with engine([FakeModelClient(slow)]) as fo:
        with anyio.move_on_after(0.01):
            await fo.call("hi")
    assert types_of(fo)[-2:] == ["call_cancelled", "engine_stopped"]


# -- the client's exceptions are kept ---------------------------------------------------------


class ProviderError(ModelError):
    """A client's own subclass, with a field of its own."""

    def __init__(self, message: str, *, kind: str, status: int) -> None:
        super().__init__(message, kind=kind)
        self.status = status


async def test_all_models_failed_chains_the_last_error_and_keeps_each_attempts_own() -> None:
    first = ProviderError("primary down", kind="server", status=503)
    second = RuntimeError("secondary broke")
    primary = FakeModelClient(always(first), model_id="primary")
    secondary = FakeModelClient(always(second), model_id="secondary")
    async with engine([primary, secondary], {"max_attempts": 1}) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call("hi")
    error = caught.value
    assert error.__cause__ is second
    assert [a.error for a in error.attempts] == [first, second]
    assert error.attempts[0].error.status == 503  # type: ignore[union-attr]


async def test_a_bad_request_raises_the_clients_own_error() -> None:
    own = ProviderError("schema rejected", kind="bad_request", status=400)
    async with engine([FakeModelClient(always(own), model_id="m")]) as fo:
        with pytest.raises(ProviderError) as caught:
            await fo.call("hi")
    assert caught.value is own
    assert caught.value.model_id == "m"


async def test_a_kept_exception_is_scrubbed_of_keys_and_of_the_prompt() -> None:
    prompt = "my secret plan for the quarter, in full detail"
    key = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    raised = ValueError(f"provider said: {prompt} (key {key})")
    async with engine([FakeModelClient(always(raised))], {"max_attempts": 1}) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call(prompt)
    kept = caught.value.attempts[0].error
    for shown in (str(kept), repr(kept), repr(caught.value.attempts)):
        assert prompt not in shown
        assert key not in shown


# -- odd answers from clients -----------------------------------------------------------------


async def test_a_client_deadline_kind_is_a_timeout_that_fails_over() -> None:
    primary = FakeModelClient(failing("deadline"), model_id="primary")
    secondary = FakeModelClient(always("from secondary"), model_id="secondary")
    async with engine([primary, secondary]) as fo:
        assert await fo.call("hi") == "from secondary"
    failed = [e for e in fo.event_store.read() if e.type == "attempt_failed"]
    assert failed[0].error_kind is ErrorKind.TIMEOUT  # type: ignore[attr-defined]


class NoneChunks:
    """A stream that yields ``None`` after ``good`` text chunks."""

    def __init__(self, good: int) -> None:
        self.good = good

    async def call(self, prompt: str) -> str:
        return "whole"

    async def stream(self, prompt: str) -> Any:
        for _ in range(self.good):
            yield "text"
        yield None

    async def health_check(self) -> bool:
        return True


async def test_a_none_chunk_after_text_is_an_interrupted_stream() -> None:
    got: list[str] = []

    async def consume(fo: MultiModelFailover) -> None:
        async for chunk in fo.stream("hi"):
            got.append(chunk)

    async with engine({"broken": NoneChunks(1)}) as fo:
        with pytest.raises(StreamInterruptedError, match="NoneType"):
            await consume(fo)
    assert got == ["text"]
    assert "call_cancelled" not in types_of(fo)
    assert "call_failed" in types_of(fo)


async def test_a_none_first_chunk_fails_over() -> None:
    clients = {"broken": NoneChunks(0), "good": FakeModelClient(always("from good"))}
    async with engine(clients, {"max_attempts": 1}) as fo:
        assert [c async for c in fo.stream("hi")] == ["from good"]


@pytest.mark.parametrize("answer", ["false", "yes", 1, None, [True]])
async def test_only_true_from_health_check_is_healthy(answer: object) -> None:
    primary = FakeModelClient(model_id="primary", probe=lambda: answer)
    primary.health_check = _returning(answer)  # type: ignore[method-assign]
    async with engine([primary, FakeModelClient(model_id="secondary")]) as fo:
        states = await fo.check_health()
    assert states["primary"] is HealthState.UNHEALTHY
    probe = next(
        e
        for e in fo.event_store.read()
        if e.type == "health_probe" and e.model_id == "primary"  # type: ignore[union-attr]
    )
    assert repr(answer) in probe.message  # type: ignore[attr-defined]


def _returning(answer: object) -> Any:
    async def health_check() -> object:
        return answer

    return health_check


# -- probes that never return -----------------------------------------------------------------


class StuckSyncProbe:
    """A sync client whose health_check blocks until released; counts its probes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.probes = 0

    def call(self, prompt: str) -> str:
        return "sync answer"

    def health_check(self) -> bool:
        self.probes += 1
        self.release.wait(10)
        return True


async def test_a_stuck_sync_probe_is_not_started_again_and_counts_as_failed() -> None:
    stuck = StuckSyncProbe()
    healthy = FakeModelClient(model_id="healthy")
    try:
        async with engine(
            {"stuck": stuck, "healthy": healthy}, health_policy={"probe_timeout": 0.05}
        ) as fo:
            for _ in range(5):
                await fo.check_health()
            assert stuck.probes == 1
            probes = [e for e in fo.event_store.read() if e.type == "health_probe"]
            stuck_probes = [p for p in probes if p.model_id == "stuck"]  # type: ignore[attr-defined]
            assert len(stuck_probes) == 5
            assert not any(p.ok for p in stuck_probes)  # type: ignore[attr-defined]
            assert "has not returned" in stuck_probes[-1].message  # type: ignore[attr-defined]
            # The stuck probe holds one thread, not one per round: sync calls still run.
            await fo.set_maintenance("healthy", True)
            assert await fo.call("hi") == "sync answer"
    finally:
        stuck.release.set()


# -- the words of a failed call ---------------------------------------------------------------


async def test_a_deadline_message_names_the_calls_own_timeout() -> None:
    async def slow(prompt: str) -> str:
        await anyio.sleep_forever()
        return "never"

    async with engine([FakeModelClient(slow, model_id="slow")]) as fo:
        with pytest.raises(DeadlineExceededError) as caught:
            await fo.call("hi", timeout=0.05)
    message = str(caught.value)
    assert "its deadline (0.05s) ran out after 1 attempt(s): slow#1 deadline" in message
    assert caught.value.attempts[0].message == "cut short by the call's deadline (0.05s)"


async def test_every_model_in_maintenance_says_so_without_a_dangling_list() -> None:
    async with engine([FakeModelClient(model_id="m")]) as fo:
        await fo.set_maintenance("m", True)
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call("hi")
    message = str(caught.value)
    assert message.endswith("no model could be tried: every model is in maintenance")
    failed = next(e for e in fo.event_store.read() if e.type == "call_failed")
    assert failed.reason == FailReason.NO_CLIENTS  # type: ignore[attr-defined]


def test_every_reason_a_call_can_fail_for_is_documented() -> None:
    from pathlib import Path  # noqa: PLC0415

    docs = (Path(__file__).parents[2] / "docs/risks/multi_model_failover.md").read_text()
    for reason in FailReason:
        assert f"`{reason.value}`" in docs, reason


# -- what a kept exception may show (found by a hostile test) ---------------------------------

KEY = "sk-" + "Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
PROMPT = "Patient 4411: SSN 078-05-1120, diagnosis pending, please summarise the chart notes"


class KeyInStr(Exception):
    def __init__(self, key: str) -> None:
        super().__init__("auth failed")
        self.key = key

    def __str__(self) -> str:
        return f"auth failed for {self.key}"


class KeyInRepr(Exception):
    def __repr__(self) -> str:
        return f"KeyInRepr(Bearer {KEY})"


def noted() -> Exception:
    exc = RuntimeError("upstream said no")
    exc.add_note(f"request had key {KEY} and prompt {PROMPT}")
    return exc


@pytest.mark.parametrize(
    "raised",
    [
        lambda: KeyInStr(KEY),
        lambda: KeyInRepr("x"),
        noted,
        lambda: ValueError("could not parse: " + PROMPT[:30]),
        lambda: ValueError("could not parse: ..." + PROMPT[-25:]),
        lambda: ValueError("bad input " + PROMPT[10:60] + " (truncated)"),
        lambda: ModelError("provider echoed " + PROMPT[:300], kind="server"),
    ],
)
async def test_no_key_or_piece_of_the_prompt_shows_in_what_the_caller_gets(raised: Any) -> None:
    async with engine([FakeModelClient(lambda p: (_ for _ in ()).throw(raised()))]) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call(PROMPT)
    error = caught.value
    import traceback  # noqa: PLC0415

    shown = [
        str(error),
        repr(error.attempts),
        str(error.__cause__),
        repr(error.__cause__),
        "".join(traceback.format_exception(error)),
        *(e.message for e in fo.event_store.read() if e.type == "attempt_failed"),  # type: ignore[union-attr]
    ]
    for text in shown:
        assert KEY not in text
        for start in range(0, len(PROMPT) - 15):
            assert PROMPT[start : start + 15] not in text, (PROMPT[start : start + 15], text)


class EchoesTheRequest(Exception):
    """An exception whose own text quotes the request, newlines and all."""

    def __init__(self, body: str) -> None:
        super().__init__("bad request")
        self.body = body

    def __str__(self) -> str:
        return f"request body: {self.body}"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
async def test_a_prompt_of_short_lines_echoed_by_a_client_is_not_stored(newline: str) -> None:
    lines = ["Patient: J. Doe", "DOB 1970-01-02", "HIV positive", "Rx: Biktarvy"]
    prompt = newline.join(lines)

    async def echo(p: str) -> str:
        raise EchoesTheRequest(p)

    async with engine([FakeModelClient(echo)], {"max_attempts": 1}) as fo:
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call(prompt)
    shown = [
        caught.value.attempts[0].message,
        str(caught.value.attempts[0].error),
        *(e.message for e in fo.event_store.read() if e.type == "attempt_failed"),  # type: ignore[union-attr]
    ]
    for text in shown:
        for line in lines:
            assert line not in text, (line, text)
