"""Logs the engine really wrote, and ways to run `failover` as a user would."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from typer.testing import CliRunner, Result

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    ModelError,
    MultiModelFailover,
)
from devs.risks.multi_model_failover.adapters.cli.commands import app
from devs.risks.multi_model_failover.adapters.cli.demo import VirtualClock

START = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
MODELS = ("primary", "secondary", "tertiary")
CALLS = 40
CALL_GAP = 6.0
# Virtual seconds: the primary rate-limits, then is down; for a moment everyone fails.
RATE_LIMITED = (30.0, 60.0)
PRIMARY_DOWN = (60.0, 180.0)
ALL_DOWN = (115.0, 135.0)
MAINTENANCE_CALLS = (25, 32)  # the secondary is in maintenance between these calls


Script = Callable[[float], Exception | None]


class ScriptedModel:
    """A fake model client: ``script(now)`` says which error to raise, if any; its health
    endpoint fails only inside ``down`` (a rate limit does not reach the health check)."""

    def __init__(
        self, clock: VirtualClock, script: Script, latency: float, down: tuple[float, float]
    ) -> None:
        self.clock = clock
        self.script = script
        self.latency = latency
        self.down = down

    async def call(self, prompt: str) -> str:
        await self.clock.sleep(self.latency)
        error = self.script(self.clock.now)
        if error is not None:
            raise error
        return f"answer to {prompt}"

    async def health_check(self) -> bool:
        return not _within(self.down, self.clock.now)


def _within(window: tuple[float, float], now: float) -> bool:
    return window[0] <= now < window[1]


def primary_script(now: float) -> Exception | None:
    if _within(RATE_LIMITED, now):
        return ModelError("429 Too Many Requests", kind=ErrorKind.RATE_LIMITED, retry_after=1.0)
    if _within(PRIMARY_DOWN, now):
        return ModelError("503 Service Unavailable", kind=ErrorKind.SERVER)
    return None


def backup_script(now: float) -> Exception | None:
    if _within(ALL_DOWN, now):
        return ModelError("502 Bad Gateway", kind=ErrorKind.SERVER)
    return None


async def write_incident(path: Path, start: datetime = START) -> None:
    """Run a scripted incident through a real MultiModelFailover into the log at ``path``."""
    clock = VirtualClock(start)
    clients = {
        "primary": ScriptedModel(clock, primary_script, 0.4, PRIMARY_DOWN),
        "secondary": ScriptedModel(clock, backup_script, 0.9, ALL_DOWN),
        "tertiary": ScriptedModel(clock, backup_script, 1.7, ALL_DOWN),
    }
    fo = MultiModelFailover(
        clients,
        {"max_attempts": 2, "base_delay": 0.2, "jitter": "none"},
        health_check_interval=30,
        health_policy={"degraded_after": 1, "unhealthy_after": 2},
        event_store=str(path),
        sleep=clock.sleep,
        clock=clock.monotonic,
        wall_clock=clock.wall,
        rng=random.Random(3),
    )
    try:
        for index in range(CALLS):
            if index % 5 == 0:
                await fo.check_health()
            if index == MAINTENANCE_CALLS[0]:
                await fo.set_maintenance("secondary", True, reason="key rotation", by="alice")
            if index == MAINTENANCE_CALLS[1]:
                await fo.set_maintenance("secondary", False, reason="rotated", by="alice")
            with contextlib.suppress(AllModelsFailedError):  # two calls fail: they are in the log
                await fo.call(f"question {index}")
            await clock.sleep(CALL_GAP)
    finally:
        await fo.aclose()


@pytest.fixture(scope="session")
def incident_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The incident log, written once per session; copy it before changing it."""
    path = tmp_path_factory.mktemp("incident") / "events.sqlite3"
    anyio.run(write_incident, path)
    return path


@pytest.fixture
def incident_log(incident_source: Path, tmp_path: Path) -> Path:
    """A private copy of the incident log."""
    copy = tmp_path / "events.sqlite3"
    shutil.copyfile(incident_source, copy)
    return copy


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Run `failover ARGS...` in-process; stdout and stderr come back separately."""
    runner = CliRunner()

    def run(*args: object, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return run


def failover_command() -> list[str]:
    """The installed `failover` console script, else the module run by this Python."""
    # Beside this interpreter first: a shim further up PATH could pick another environment.
    script = shutil.which("failover", path=os.path.dirname(sys.executable))
    if script is None:
        script = shutil.which("failover")
    if script is not None:
        return [script]
    return [sys.executable, "-m", "devs.risks.multi_model_failover.adapters.cli"]


@pytest.fixture
def run_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `failover ARGS...` as a separate process, as a user's shell would."""

    def run(
        *args: object, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own command line
            [*failover_command(), *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env} if env is not None else None,
        )

    return run
