"""A separate process for the crash and multi-process tests (run as a script, not collected).

Modes:

``calls LOG DURABILITY SEED``
    Open the log, print ``ready``, then run calls from 8 concurrent tasks until killed,
    printing each returned call's id (flushed) once ``call()`` has returned.
``append LOG COUNT SEED``
    Open the log, print ``ready``, wait for a line on stdin, run ``COUNT`` calls from 8
    concurrent tasks, print ``done WRITER SUCCEEDED FAILED`` and close.
``maintenance LOG MODEL``
    Open the log, put ``MODEL`` in maintenance, print ``done`` and close.
"""

from __future__ import annotations

import sys

import anyio
from reliability_support import FlakyClient

from devs.risks.multi_model_failover import AllModelsFailedError, MultiModelFailover

MODELS = ("erratic", "steady")
POLICY = {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.002, "attempt_timeout": 1.0}


def open_engine(log: str, durability: str, seed: int) -> MultiModelFailover:
    """An engine over two flaky clients on ``log``."""
    clients = [
        FlakyClient(MODELS[0], seed, error_rate=0.3),
        FlakyClient(MODELS[1], seed + 1, error_rate=0.02),
    ]
    return MultiModelFailover(
        clients,
        POLICY,
        health_policy={"degraded_after": 5, "unhealthy_after": 1_000_000},
        event_store=log,
        durability=durability,
    )


def say(line: str) -> None:
    """Print one line and flush it: the parent reads it as soon as it is written."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def calls_until_killed(log: str, durability: str, seed: int) -> None:
    """Call forever; every call id printed has returned to its caller."""
    fo = open_engine(log, durability, seed)
    say("ready")

    async def loop() -> None:
        while True:
            try:
                outcome = await fo.call_with_outcome("crash me")
            except AllModelsFailedError:
                continue
            say(outcome.call_id)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(loop)


async def append_calls(log: str, count: int, seed: int) -> None:
    """Run ``count`` calls once the parent says go; report what this process wrote."""
    fo = open_engine(log, "process", seed)
    say("ready")
    await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent's "go"
    remaining = count
    results = {"ok": 0, "failed": 0}

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await fo.call("shared log")
            except AllModelsFailedError:
                results["failed"] += 1
            else:
                results["ok"] += 1

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(loop)
    await fo.aclose()
    say(f"done {fo.event_store.writer} {results['ok']} {results['failed']}")


async def maintenance(log: str, model: str) -> None:
    """An operator in another process takes ``model`` out of rotation."""
    fo = open_engine(log, "process", 0)
    await fo.set_maintenance(model, True, reason="incident in another process", by="worker")
    await fo.aclose()
    say("done")


def main(argv: list[str]) -> None:
    """Dispatch on the mode named first."""
    mode, log, *rest = argv
    if mode == "calls":
        anyio.run(calls_until_killed, log, rest[0], int(rest[1]))
    elif mode == "append":
        anyio.run(append_calls, log, int(rest[0]), int(rest[1]))
    elif mode == "maintenance":
        anyio.run(maintenance, log, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
