"""The backoff schedule: capped exponential growth with a choice of jitter.

Pure functions of the policy, the attempt number and a ``random.Random``; safe for any attempt
number (no overflow at attempt 10,000 or 10**9).
"""

from __future__ import annotations

import random

from .policies import RetryPolicy


def capped_delay(policy: RetryPolicy, n: int) -> float:
    """``min(max_delay, base_delay * multiplier ** (n-1))`` for the n-th backoff (n >= 1)."""
    if n < 1:
        raise ValueError(f"backoff number must be >= 1, got {n}")
    base, cap = policy.base_delay, policy.max_delay
    if base <= 0 or cap <= 0:
        return 0.0
    if policy.multiplier == 1 or n == 1:
        return min(cap, base)
    try:
        grown = base * policy.multiplier ** (n - 1)
    except OverflowError:  # huge attempt numbers: the cap is the answer
        return cap
    return min(cap, grown)


def backoff_delay(
    policy: RetryPolicy, n: int, rng: random.Random, previous: float | None = None
) -> float:
    """The wait before the (n+1)-th attempt on one client, after its n-th failure.

    ``previous`` is the last delay on this client (for decorrelated jitter).
    """
    ceiling = capped_delay(policy, n)
    match policy.jitter:
        case "none":
            return ceiling
        case "full":
            return rng.uniform(0.0, ceiling)
        case "equal":
            return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
        case "decorrelated":
            base = min(policy.base_delay, policy.max_delay)
            upper = max(base, (previous if previous is not None else base) * 3)
            return min(policy.max_delay, rng.uniform(base, upper))
    raise ValueError(f"unknown jitter {policy.jitter!r}")  # pragma: no cover - validated
