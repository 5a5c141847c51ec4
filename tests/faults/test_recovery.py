"""A primary down (503) for a few seconds, then healthy, under steady traffic: it leaves the
rotation, is probed with real requests (never ``GET /models``, which answers 200 all along),
is not hammered meanwhile, and serves again within about two seconds of recovering, never
before."""

from __future__ import annotations

import time

import anyio
import pytest

from devs.risks.multi_model_failover import HealthState

from .catalogue import unavailable
from .provider import FaultyProvider
from .support import OTHER, PROMPT, Clocks, events_of, failover

pytestmark = pytest.mark.anyio

OUTAGE = 3.0  # seconds of 503
CALL_GAP = 0.15  # seconds between the caller's calls
RECOVERY_LIMIT = 2.5  # the primary serves again at most this long after the outage ended
# The engine's defaults this test relies on (HealthPolicy): unhealthy after 3 failed calls of
# 2 attempts each, one trial call per second of cool-down, probes 1, 2, 4 s after that.
TRIAL_AFTER = 1.0
BEFORE_UNHEALTHY = 3 * 2
TRIALS = int(OUTAGE / TRIAL_AFTER) + 1
PROBES = 3
# Two clocks (the provider's monotonic one, the events' UTC one) read microseconds apart.
EPSILON = 0.02


@pytest.mark.parametrize(("anyio_backend", "wire"), [("asyncio", "openai"), ("trio", "anthropic")])
async def test_a_recovered_primary_serves_again_within_two_seconds(
    provider: FaultyProvider, wire: str
) -> None:
    primary = provider.add("primary", "An answer from the primary model.")
    fallback = provider.add("fallback", "An answer from the fallback model.")
    clocks = Clocks()
    async with failover(provider, (primary, wire), (fallback, OTHER[wire]), running=True) as fo:
        assert (await fo.call_with_outcome(PROMPT)).model_id == "primary"
        start = time.monotonic()
        end = start + OUTAGE
        primary.fail_between(start, end, unavailable())
        served: list[tuple[float, str]] = []  # (when the call returned, which model served it)
        while time.monotonic() < end + RECOVERY_LIMIT + 1.0:
            outcome = await fo.call_with_outcome(PROMPT)
            returned = time.monotonic()
            served.append((returned, outcome.model_id))
            if outcome.model_id == "primary":
                assert outcome.response.text == primary.answer
                break
            assert outcome.response.text == fallback.answer
            await anyio.sleep(CALL_GAP)
        changes = [
            (clocks.monotonic(e.at), e.to_state)
            for e in events_of(fo, "state_changed")
            if e.model_id == "primary"
        ]
        trials = [
            e
            for e in events_of(fo, "attempt_started")
            if e.model_id == "primary" and getattr(e, "trial", False)
        ]
        probes = [e for e in events_of(fo, "health_probe") if e.model_id == "primary"]
        state_after = fo.states["primary"]

    story = timeline(provider, start, changes, served)

    # The caller: served throughout, by the fallback during the outage, by the primary after.
    back = [t for t, model_id in served if model_id == "primary"]
    assert back, story
    assert end <= back[0] <= end + RECOVERY_LIMIT, story
    assert any(model_id == "fallback" for t, model_id in served if t < end), story
    assert all(model_id == "fallback" for _, model_id in served[:-1]), story
    assert state_after is HealthState.HEALTHY, story

    # The log: unhealthy during the outage, healthy again only once it had ended.
    unhealthy = [t for t, state in changes if state is HealthState.UNHEALTHY and t >= start]
    assert unhealthy, story
    assert unhealthy[0] < end, story
    recovered = [t for t, state in changes if state is HealthState.HEALTHY and t >= start]
    assert recovered, story
    assert all(t >= end - EPSILON for t in recovered), story

    # The provider: real chat requests only, a bounded number of them during the outage.
    assert provider.seen("primary", chat=False) == []
    assert all(s.method == "POST" for s in provider.seen("primary", chat=None))
    during = [s for s in provider.seen("primary") if start <= s.at < end]
    assert len(during) <= BEFORE_UNHEALTHY + TRIALS + PROBES, story
    # Once unhealthy, calls try it once per cool-down (and a call in flight may retry once).
    tried = [s for s in provider.calls("primary") if unhealthy[0] + EPSILON < s.at < end]
    assert len(tried) <= (end - unhealthy[0]) / TRIAL_AFTER + 2, story
    if unhealthy[0] + TRIAL_AFTER + 0.5 < end:  # time enough for a trial and a probe
        assert trials, f"no trial call was recorded\n{story}"
        assert any(s.probe for s in during), f"no probe reached the primary in time\n{story}"
        assert any(not p.ok for p in probes), f"no failed probe was recorded\n{story}"
    first_back = next(s for s in provider.seen("primary") if s.at >= start and s.served)
    assert end <= first_back.at <= end + RECOVERY_LIMIT, story


def timeline(
    provider: FaultyProvider,
    start: float,
    changes: list[tuple[float, HealthState]],
    served: list[tuple[float, str]],
) -> str:
    """What happened, in seconds from the start of the outage (for a failure's message)."""
    lines = [
        f"{s.at - start:+.2f}s primary {'probe' if s.probe else 'call'} -> {s.fault or 'ok'}"
        for s in provider.seen("primary")
        if s.at >= start - 1
    ]
    lines += [f"{t - start:+.2f}s primary is {state.value}" for t, state in changes]
    lines += [f"{t - start:+.2f}s a call returned from {model_id}" for t, model_id in served]
    return "\n".join(sorted(lines, key=lambda line: float(line.split("s ", 1)[0])))
