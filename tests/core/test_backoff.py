"""The backoff schedule: exact without jitter, bounded with it, safe for any attempt number."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover import RetryPolicy
from devs.risks.multi_model_failover.core.backoff import backoff_delay, capped_delay

# Realistic ranges, subnormal floats included: the schedule must hold for any valid policy.
delays = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False, allow_infinity=False)
multipliers = st.floats(min_value=1.0, max_value=100.0, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=10**9)
small_attempts = st.integers(min_value=1, max_value=200)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def policy_of(jitter: str, base: float, multiplier: float, cap: float) -> RetryPolicy:
    return RetryPolicy(
        base_delay=base,
        multiplier=multiplier,
        max_delay=cap,
        jitter=jitter,  # type: ignore[arg-type]
    )


def expected_cap(base: float, multiplier: float, cap: float, n: int) -> float:
    """DESIGN.md's formula, min(max_delay, base_delay * multiplier ** (n-1)), overflow-safe."""
    try:
        grown = base * multiplier ** (n - 1)
    except OverflowError:
        grown = 0.0 if base == 0 else float("inf")
    return min(cap, grown)


@settings(max_examples=300)
@given(base=delays, multiplier=multipliers, cap=delays, n=small_attempts)
@example(base=2.0, multiplier=2.0, cap=5e-324, n=2)  # cap / base underflows to 0
@example(base=5e-324, multiplier=22.0, cap=1.0, n=231)  # multiplier ** (n-1) overflows
def test_no_jitter_is_exactly_the_capped_exponential(
    base: float, multiplier: float, cap: float, n: int
) -> None:
    policy = policy_of("none", base, multiplier, cap)
    delay = backoff_delay(policy, n, random.Random(0))
    assert delay == expected_cap(base, multiplier, cap, n)


def test_no_jitter_examples_from_the_design() -> None:
    policy = policy_of("none", 0.5, 2.0, 8.0)
    rng = random.Random(0)
    assert [backoff_delay(policy, n, rng) for n in range(1, 8)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0,
    ]  # fmt: skip


@given(base=delays, multiplier=multipliers, cap=delays, n=attempts, seed=seeds)
@example(base=2.2250738585072014e-308, multiplier=4.0, cap=4.0, n=513, seed=0)
def test_full_jitter_stays_within_zero_and_the_cap(
    base: float, multiplier: float, cap: float, n: int, seed: int
) -> None:
    policy = policy_of("full", base, multiplier, cap)
    ceiling = capped_delay(policy, n)
    assert 0.0 <= backoff_delay(policy, n, random.Random(seed)) <= ceiling <= cap


@given(base=delays, multiplier=multipliers, cap=delays, n=attempts, seed=seeds)
@example(base=2.0, multiplier=2.0, cap=5e-324, n=2, seed=0)
def test_equal_jitter_stays_within_half_the_cap_and_the_cap(
    base: float, multiplier: float, cap: float, n: int, seed: int
) -> None:
    policy = policy_of("equal", base, multiplier, cap)
    ceiling = capped_delay(policy, n)
    assert ceiling / 2 <= backoff_delay(policy, n, random.Random(seed)) <= ceiling


@given(
    base=delays,
    multiplier=multipliers,
    cap=delays,
    seed=seeds,
    steps=st.integers(min_value=1, max_value=30),
)
@example(base=2.0, multiplier=2.0, cap=5e-324, seed=0, steps=2)
def test_decorrelated_jitter_stays_within_base_and_max_delay(
    base: float, multiplier: float, cap: float, seed: int, steps: int
) -> None:
    policy = policy_of("decorrelated", base, multiplier, cap)
    rng = random.Random(seed)
    floor = min(base, cap)
    previous: float | None = None
    for n in range(1, steps + 1):
        delay = backoff_delay(policy, n, rng, previous)
        assert floor <= delay <= cap
        previous = delay


@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
@given(base=delays, multiplier=multipliers, cap=delays, n=attempts, seed=seeds)
@example(base=2.0, multiplier=2.0, cap=5e-324, n=2, seed=0)
@example(base=2.2250738585072014e-308, multiplier=4.0, cap=4.0, n=513, seed=0)
def test_any_attempt_number_is_safe(
    jitter: str, base: float, multiplier: float, cap: float, n: int, seed: int
) -> None:
    policy = policy_of(jitter, base, multiplier, cap)
    delay = backoff_delay(policy, n, random.Random(seed), previous=cap)
    assert 0.0 <= delay <= cap


@pytest.mark.parametrize("n", [10**4, 10**6, 10**9])
def test_huge_attempt_numbers_reach_the_cap_without_overflow(n: int) -> None:
    policy = policy_of("none", 0.5, 2.0, 8.0)
    assert capped_delay(policy, n) == 8.0
    assert backoff_delay(policy, n, random.Random(1)) == 8.0


@given(base=delays, multiplier=multipliers, cap=delays, n=attempts)
@example(base=2.225073858507e-311, multiplier=4.0, cap=1.0, n=512)
def test_caps_never_decrease(base: float, multiplier: float, cap: float, n: int) -> None:
    policy = policy_of("none", base, multiplier, cap)
    assert capped_delay(policy, n) <= capped_delay(policy, n + 1)


def test_the_same_seed_gives_the_same_schedule() -> None:
    policy = policy_of("full", 0.5, 2.0, 8.0)
    first = [backoff_delay(policy, n, random.Random(42)) for n in range(1, 10)]
    second = [backoff_delay(policy, n, random.Random(42)) for n in range(1, 10)]
    assert first == second


def test_backoff_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        capped_delay(RetryPolicy(), 0)
