"""Another process appending to an event log: a MultiModelFailover serving calls until told to
stop. Usage: ``python log_writer.py LOG READY_FILE STOP_FILE``. READY_FILE appears after the
first 50 calls; the writer stops when STOP_FILE appears (or after 60 seconds)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import anyio

from devs.risks.multi_model_failover import ErrorKind, ModelError, MultiModelFailover


class Flaky:
    """Fails every third call with a server error."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, prompt: str) -> str:
        self.calls += 1
        if self.calls % 3 == 0:
            raise ModelError("503 Service Unavailable", kind=ErrorKind.SERVER)
        return prompt

    async def health_check(self) -> bool:
        return True


class Steady:
    async def call(self, prompt: str) -> str:
        return prompt

    async def health_check(self) -> bool:
        return True


async def main(log: Path, ready: Path, stop: Path) -> None:
    # Touching and polling two tiny marker files is quick enough to do on the loop here.
    stopped, mark_ready = stop.exists, ready.touch
    fo = MultiModelFailover(
        {"primary": Flaky(), "secondary": Steady()},
        {"max_attempts": 1},
        health_policy={"degraded_after": 5, "unhealthy_after": 50},
        event_store=str(log),
        rng=random.Random(5),
    )
    deadline = time.monotonic() + 60
    calls = 0
    try:
        while not stopped() and time.monotonic() < deadline:
            await fo.call(f"question {calls}")
            calls += 1
            if calls == 50:
                # In the log, for other processes (a call returns once journaled; the writer
                # thread moves its events into the log within about 50 ms).
                fo.event_store.flush()  # type: ignore[attr-defined]
                mark_ready()
            if calls % 20 == 0:
                await anyio.sleep(0.002)
    finally:
        await fo.aclose()


if __name__ == "__main__":
    anyio.run(main, *(Path(arg) for arg in sys.argv[1:4]))
