"""The fake async model clients every contender calls, and the scenarios that script them.

Every contender (our engine, the hand-written floor, tenacity, LiteLLM's Router) is measured
on the same client class doing the same thing, so the differences in the tables are what each
contender adds around the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import anyio

from devs.risks.multi_model_failover import ErrorKind, ModelError

PROMPT: Final = "Summarise the incident in one line."
RESPONSE: Final = "ok"


async def no_sleep(seconds: float) -> None:
    """The injected backoff sleep: returns at once, so retries cost only their bookkeeping."""


ANSWER: Final = "answer"
FAIL: Final = "fail"
ALTERNATE: Final = "alternate"


class FakeClient:
    """An async client that answers at once (``answer``), fails every call (``fail``), or
    fails the odd-numbered calls and answers the even ones (``alternate``)."""

    def __init__(self, model_id: str, script: str = ANSWER) -> None:
        self.model_id = model_id
        self.script = script
        self.calls = 0

    async def call(self, prompt: str) -> str:
        """Answer ``prompt``, or raise ``ModelError(kind=server)`` when the script says so."""
        self.calls += 1
        if self.script == FAIL or (self.script == ALTERNATE and self.calls % 2):
            raise ModelError("upstream overloaded", kind=ErrorKind.SERVER)
        return RESPONSE

    async def health_check(self) -> bool:
        """Always healthy: the benchmark keeps every client in rotation."""
        return True


class HeldClient:
    """An async client whose calls stay in flight until ``release`` is set (memory test).

    ``all_in`` is set once ``expected`` calls are waiting.
    """

    def __init__(self, model_id: str, release: anyio.Event, expected: int) -> None:
        self.model_id = model_id
        self.release = release
        self.expected = expected
        self.in_flight = 0
        self.all_in = anyio.Event()

    async def call(self, prompt: str) -> str:
        """Wait for the release event, then answer."""
        self.in_flight += 1
        if self.in_flight == self.expected:
            self.all_in.set()
        await self.release.wait()
        return RESPONSE

    async def health_check(self) -> bool:
        """Always healthy."""
        return True


@dataclass(frozen=True)
class Scenario:
    """What one call does: which clients exist and how each behaves."""

    name: str
    title: str
    # The script of each client, in configured order.
    scripts: tuple[str, ...]
    # Attempts on one client before failing over (engine policy and floor alike).
    max_attempts: int
    # Per call: attempts, failovers, retries (checked once before timing).
    attempts: int
    failovers: int
    retries: int

    def clients(self) -> list[FakeClient]:
        """Fresh clients for one contender."""
        names = ("primary", "secondary")
        return [FakeClient(names[i], script) for i, script in enumerate(self.scripts)]


HAPPY = Scenario(
    name="success",
    title="(a) success on the first client",
    scripts=(ANSWER, ANSWER),
    max_attempts=2,
    attempts=1,
    failovers=0,
    retries=0,
)
FAILOVER = Scenario(
    name="failover",
    title="(b) one failover (primary raises ModelError, max_attempts=1)",
    scripts=(FAIL, ANSWER),
    max_attempts=1,
    attempts=2,
    failovers=1,
    retries=0,
)
RETRY = Scenario(
    name="retry",
    title="(c) retry then success (no-op async sleep)",
    scripts=(ALTERNATE, ANSWER),
    max_attempts=2,
    attempts=2,
    failovers=0,
    retries=1,
)
SCENARIOS: Final = (HAPPY, FAILOVER, RETRY)
