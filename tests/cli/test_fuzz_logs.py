"""Random logs for every reading command and the store's reader (issue #12): a file of random
bytes, and a real log with random rows. Never a traceback, an exit code of 0, 1 or 2 (or
``EventLogError`` from the library), and the file unchanged byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from devs.risks.multi_model_failover import EventLogError, SQLiteEventStore, replay
from devs.risks.multi_model_failover.adapters.cli.commands import app

LOG = "events.sqlite3"
READERS = [
    ["timeline", LOG],
    ["timeline", LOG, "--json"],
    ["state", LOG],
    ["metrics", LOG],
    ["metrics", LOG, "--format", "prometheus"],
    ["audit", LOG],
    ["report", LOG, "-o", "out.html"],
    ["verify", LOG, "--expect", "failover"],
    ["timeline", LOG, "--strict"],
]
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
KNOWN = ["call_started", "attempt_failed", "failover", "state_changed", "maintenance"]


@st.composite
def bodies(draw: st.DrawFn) -> str | bytes:
    """A row body: random bytes, random text, or JSON shaped more or less like an event."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        return draw(st.text(max_size=40))
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), JSONISH, max_size=4))
    body["type"] = draw(st.sampled_from([*KNOWN, "brand_new_event"]) | st.text(max_size=8))
    if draw(st.booleans()):
        body["at"] = draw(st.sampled_from(["2026-01-01T00:00:00+00:00", "yesterday", 3]))
    return json.dumps(body, default=str)


def _run(folder: Path, args: list[str]) -> None:
    log = folder / LOG
    before = log.read_bytes()
    with contextlib.chdir(folder):
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    exception = result.exception
    assert exception is None or isinstance(exception, SystemExit), (args, result.exc_info)
    assert result.exit_code in {0, 1, 2}, (args, result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr, (args, result.stderr)
    assert log.read_bytes() == before, args


def _read_with_the_library(log: Path) -> None:
    before = log.read_bytes()
    with contextlib.suppress(EventLogError):
        with SQLiteEventStore(log, create=False) as store:
            list(store.read())
        replay(log)
    assert log.read_bytes() == before


@SETTINGS
@given(data=st.binary(max_size=2048), header=st.booleans())
def test_a_file_of_random_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, header: bool
) -> None:
    folder = tmp_path_factory.mktemp("bytes")
    # Half the time it starts like an SQLite file, to get past the first look.
    (folder / LOG).write_bytes((b"SQLite format 3\x00" if header else b"") + data)
    for args in READERS:
        _run(folder, args)
    _read_with_the_library(folder / LOG)


@SETTINGS
@given(rows=st.lists(st.tuples(bodies(), st.integers(-5, 10**6)), min_size=1, max_size=4))
def test_a_real_log_with_random_rows(
    incident_source: Path, tmp_path_factory: pytest.TempPathFactory, rows: list[Any]
) -> None:
    folder = tmp_path_factory.mktemp("rows")
    log = folder / LOG
    shutil.copyfile(incident_source, log)
    with closing(sqlite3.connect(log)) as conn, conn:
        (last,) = conn.execute("SELECT max(seq) FROM events").fetchone()
        for offset, (body, _) in enumerate(rows, start=1):
            conn.execute(
                "INSERT INTO events (seq, type, at, writer, body) VALUES (?, ?, ?, ?, ?)",
                (last + offset, "x", "2026-01-01T00:00:00+00:00", "fuzz", body),
            )
    for args in READERS:
        _run(folder, args)
    _read_with_the_library(log)
