"""A process-wide retry budget, as Finagle and Envoy keep one.

Over a sliding window (10 s, in 1 s slots), retries may add at most ``ratio`` of the calls
started in it, plus ``min_per_s`` retries per second that are always allowed. A provider outage
then costs at most that share of extra load instead of a retry storm. Failover is never limited
by it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable


class RetryBudget:
    """Counts calls and retries in a sliding window of ``window`` seconds on ``clock``."""

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        clock: Callable[[], float],
        *,
        window: int = 10,
    ) -> None:
        self._ratio = ratio
        self._reserve = min_per_s * window
        self._clock = clock
        self._window = window
        # [slot, calls, retries], oldest first; at most ``window`` slots.
        self._slots: deque[list[int]] = deque()
        self._calls = 0
        self._retries = 0

    def _current(self) -> list[int]:
        slot = math.floor(self._clock())
        slots = self._slots
        while slots and slots[0][0] <= slot - self._window:
            _, calls, retries = slots.popleft()
            self._calls -= calls
            self._retries -= retries
        if not slots or slots[-1][0] != slot:
            slots.append([slot, 0, 0])
        return slots[-1]

    def record_call(self) -> None:
        """A call started: it deposits ``ratio`` of a retry."""
        self._current()[1] += 1
        self._calls += 1

    def record_retry(self) -> None:
        """Count a retry made without asking (a replay's recorded decision): the window's
        count stays true to what was done."""
        self._current()[2] += 1
        self._retries += 1

    def try_retry(self) -> bool:
        """Withdraw one retry if the budget allows it; False means fail over instead."""
        current = self._current()
        if self._retries + 1 > self._reserve + self._ratio * self._calls:
            return False
        current[2] += 1
        self._retries += 1
        return True
