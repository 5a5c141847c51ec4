"""Every command takes a fleet's postgresql:// URL where it takes a path, and answers alike.

The same scripted incident is written once into an SQLite file and once into PostgreSQL; each
command must print the same answer from both. Skipped, saying why, without a PostgreSQL server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from typer.testing import Result

from .conftest import START, write_incident

Run = Callable[..., Result]

SINCE = START.replace(minute=START.minute + 1).isoformat()
QUESTIONS = [
    ("metrics", "--format", "json"),
    ("state", "--json"),
    ("state", "--at", SINCE, "--json"),
    ("audit", "--json"),
    ("timeline", "--json"),
    ("timeline", "--model", "secondary", "--since", SINCE, "--json"),
    ("timeline", "--type", "failover", "--json"),
    ("verify", "--expect", "failover", "--expect", "maintenance"),
]


@pytest.fixture(scope="module")
def incident_url(pg_cluster: object) -> str:
    from storage.pg_server import Cluster, fresh_database  # noqa: PLC0415 - beside the fixture

    assert isinstance(pg_cluster, Cluster)
    url = fresh_database(pg_cluster)
    anyio.run(write_incident, url)
    return url


@pytest.mark.parametrize("question", QUESTIONS, ids=" ".join)
def test_a_url_answers_as_the_file_does(
    run_cli: Run, incident_source: Path, incident_url: str, question: tuple[str, ...]
) -> None:
    command, *options = question
    from_file = run_cli(command, incident_source, *options)
    from_url = run_cli(command, incident_url, *options)
    assert from_file.exit_code == 0, from_file.stderr
    assert from_url.exit_code == 0, from_url.stderr
    assert same(from_url.stdout, incident_url) == same(from_file.stdout, str(incident_source))


def same(output: str, log: str) -> str:
    """``output`` without what differs between two runs: the log's name, the call id prefix
    (random per engine)."""
    return re.sub(r"\b[0-9a-f]{8}-(\d+)\b", r"CALL-\1", output.replace(log, "LOG"))


def test_a_url_without_a_log_is_one_clear_line(run_cli: Run, pg_url: str) -> None:
    result = run_cli("state", pg_url)
    assert result.exit_code == 2
    assert result.stderr.startswith("failover: no event log")
    assert len(result.stderr.strip().splitlines()) == 1
