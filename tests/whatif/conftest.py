"""Fixtures of the what-if tests: a recorded log on disk, the command line in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from devs.risks.multi_model_failover.adapters.cli.commands import app
from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

from .scenario import Scenario, record_scenario


async def record_to(path: Path, scenario: Scenario) -> list[Event]:
    """Record ``scenario`` into the SQLite log at ``path``; its events, oldest first."""
    await record_scenario(scenario, lambda: SQLiteEventStore(path, durability="buffered"))
    with SQLiteEventStore(path, create=False) as store:
        return list(store.read())


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Run `failover ARGS...` in-process; stdout and stderr come back separately."""
    runner = CliRunner()

    def run(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run
