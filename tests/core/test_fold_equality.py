"""The live view equals the replayed log, whatever the faults: ``fo.metrics() == replay(...)``.

Hypothesis draws the clients, their per-attempt outcomes, the policies and a sequence of calls,
probe rounds and maintenance switches; the engine runs on virtual time inside ``anyio.run``.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover import (
    HealthState,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.core.responses import Usage

from .fakes import FakeClock, FakeModelClient

KINDS = (
    "rate_limited", "timeout", "server", "unknown", "auth",
    "context_length", "content_filter", "bad_request",
)  # fmt: skip
OUTCOMES = ("ok", "ok_usage", *KINDS, "retry_after", "timeout_error", "exception", "billed")


def raise_outcome(outcome: str, model_id: str) -> object:
    """Answer as ``outcome`` says: return text or raise a fresh failure."""
    if outcome == "ok":
        return f"answer from {model_id}"
    if outcome == "ok_usage":
        return ModelResponse(
            text="answer", model=model_id, usage=Usage(input_tokens=11, output_tokens=3)
        )
    if outcome == "billed":  # a failure the provider still charged for
        raise ModelError("overloaded", kind="server", usage={"input_tokens": 5})
    if outcome == "retry_after":
        raise ModelError("slow down", kind="rate_limited", retry_after=0.01)
    if outcome == "timeout_error":
        raise TimeoutError("read timed out")
    if outcome == "exception":
        raise RuntimeError("connection reset by peer")
    raise ModelError(f"{outcome} failure", kind=outcome)


@dataclass
class Scripted:
    """The per-attempt outcomes of one client; ``ok`` once they run out."""

    model_id: str
    outcomes: list[str]
    healthy: list[bool] = field(default_factory=list)

    def handler(self, prompt: str) -> object:
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        return raise_outcome(outcome, self.model_id)

    def probe(self) -> bool:
        return self.healthy.pop(0) if self.healthy else True


clients_st = st.integers(min_value=1, max_value=4).flatmap(
    lambda n: st.lists(
        st.tuples(
            st.lists(st.sampled_from(OUTCOMES), max_size=8),
            st.lists(st.booleans(), max_size=3),
        ),
        min_size=n,
        max_size=n,
    )
)
retry_st = st.fixed_dictionaries(
    {
        "max_attempts": st.integers(min_value=1, max_value=3),
        "base_delay": st.sampled_from([0.0, 0.001, 0.01]),
        "multiplier": st.sampled_from([1.0, 2.0, 3.0]),
        "max_delay": st.just(0.05),
        "jitter": st.just("none"),
        "max_total_attempts": st.none() | st.integers(min_value=1, max_value=6),
        "retry_budget_ratio": st.sampled_from([0.0, 0.2]),
        "retry_budget_min_per_s": st.sampled_from([0.0, 10.0]),
    }
)
health_st = st.integers(min_value=1, max_value=3).flatmap(
    lambda degraded: st.fixed_dictionaries(
        {
            "degraded_after": st.just(degraded),
            "unhealthy_after": st.integers(min_value=degraded, max_value=4),
        }
    )
)
action_st = st.one_of(
    st.just(("call", 0, False)),
    st.just(("probe", 0, False)),
    st.tuples(st.just("maintenance"), st.integers(min_value=0, max_value=3), st.booleans()),
)


async def play(
    scripts: list[Scripted], retry: dict[str, Any], health: dict[str, int], actions: list[Any]
) -> MultiModelFailover:
    clock = FakeClock()
    clients = [FakeModelClient(s.handler, model_id=s.model_id, probe=s.probe) for s in scripts]
    fo = MultiModelFailover(
        clients,
        retry,
        health_policy=health,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(0),
        prices={s.model_id: {"input": 0.3, "output": 1.7} for s in scripts[::2]},
    )
    for action, index, on in actions:
        if action == "call":
            with contextlib.suppress(ModelError):
                await fo.call("prompt")
        elif action == "probe":
            await fo.check_health()
        else:
            model_id = scripts[index % len(scripts)].model_id
            others = [m for m in fo.states if m != model_id]
            # Every client in maintenance at once has its own test in test_engine.py.
            if on and all(fo.states[m] is HealthState.MAINTENANCE for m in others):
                continue
            await fo.set_maintenance(model_id, on)
        assert_live_equals_replay(fo)
    await fo.aclose()
    return fo


def assert_live_equals_replay(fo: MultiModelFailover) -> None:
    replayed = replay(fo.event_store)
    assert fo.metrics() == replayed.metrics
    assert fo.states == {mid: replayed.states[mid].state for mid in fo.states}
    assert fo.snapshot() == replayed


@settings(max_examples=100, deadline=None)
@given(
    clients=clients_st,
    retry=retry_st,
    health=health_st,
    actions=st.lists(action_st, min_size=1, max_size=8),
)
def test_live_metrics_and_states_equal_the_replayed_log(
    clients: list[tuple[list[str], list[bool]]],
    retry: dict[str, Any],
    health: dict[str, int],
    actions: list[Any],
) -> None:
    scripts = [Scripted(f"m{i}", list(outs), list(ok)) for i, (outs, ok) in enumerate(clients)]
    fo = anyio.run(play, scripts, retry, health, actions)
    assert_live_equals_replay(fo)
    metrics = fo.metrics()
    assert metrics.calls == sum(1 for a in actions if a[0] == "call")
    assert metrics.calls == metrics.calls_succeeded + metrics.calls_failed
    assert metrics.attempts == sum(m.attempts for m in metrics.by_model.values())
    for model in metrics.by_model.values():
        assert model.attempts == model.successes + model.failures
    assert metrics.input_tokens == sum(m.input_tokens for m in metrics.by_model.values())
    assert metrics.output_tokens == sum(m.output_tokens for m in metrics.by_model.values())
