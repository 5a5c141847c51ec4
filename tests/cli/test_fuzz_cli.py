"""Random arguments for every command, against a small real log (issue #12): never a traceback,
an exit code of 0, 1 or 2, and the log unchanged (``maintenance`` only appends to it).

In-process through typer's runner, with exceptions caught by the runner and then checked: an
exception other than ``SystemExit`` is a failure, not a quiet exit code 1.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from devs.risks.multi_model_failover.adapters.cli.commands import app

LOG = "events.sqlite3"
# Only "/" is left out of random text: it keeps every path the commands write (a report, a
# demo log) inside the example's own folder. Argv never holds NUL; it can hold lone
# surrogates (undecodable bytes, under surrogateescape).
ALPHABET = st.characters(
    blacklist_characters="/\x00", blacklist_categories=("Cs",)
) | st.sampled_from(["\x1b", "\x07", "\x9b", "\u202e", "\r", "\n", "\udcff"])
TEXT = st.text(ALPHABET, max_size=20) | st.sampled_from(
    ["", "-", "--", "--help", "[red]x[/red]", "%s{}", "\x1b[2J", "\x1b]0;pwned\x07"]
)
NUMBERS = st.integers(min_value=-(10**30), max_value=10**30).map(str) | st.sampled_from(
    ["0", "-1", "1e400", "nan", "inf", str(10**400), "0x10", " 3 "]
)
TIMES = st.one_of(
    st.sampled_from(
        [
            "-999999999d",
            "+999999999w",
            f"-{'9' * 400}s",
            "-1.5h",
            "-0s",
            "now",
            "NOW",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01",
            "9999-12-31T23:59:59.999999",
            "2024-02-30",
            "03:12",
            "3:12",
            "24:00",
            "23:59:60",
            "03:12:45.123456",
            "03:12Z",
            "2024-05-01T03:12:00Z",
        ]
    ),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.integers(min_value=0, max_value=10**12).map(lambda n: f"-{n}m"),
    st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}"),
)
MODELS = st.sampled_from(["primary", "secondary", "tertiary", "nosuch"])
TYPES = st.sampled_from(["failover", "attempt_failed", "state_changed", "maintenance", "x"])
FILES = st.sampled_from([LOG, "missing.sqlite3", ".", "..", "out.html", "sub", "sub/out.html"])
# The options of each command and what their values look like (None: a flag). ``--follow`` is
# left out on purpose: it runs until interrupted.
OPTIONS: dict[str, dict[str, st.SearchStrategy[str] | None]] = {
    "timeline": {
        "--since": TIMES, "--until": TIMES, "--call": TEXT, "--model": MODELS | TEXT,
        "--type": TYPES | TEXT, "--last": NUMBERS, "--json": None,
    },
    "state": {"--at": TIMES, "--json": None},
    "metrics": {"--at": TIMES, "--format": st.sampled_from(["text", "JSON", "prometheus"]) | TEXT},
    "audit": {"--model": MODELS | TEXT, "--json": None},
    "report": {"--output": FILES | TEXT, "-o": FILES | TEXT, "--since": TIMES, "--until": TIMES},
    "verify": {"--expect": TYPES | TEXT, "--min": NUMBERS},
    "maintenance": {"--log": FILES | TEXT, "--reason": TEXT, "--by": TEXT},
    "demo": {"--log": FILES | TEXT, "--seed": NUMBERS | TEXT},
}  # fmt: skip
ANY = st.one_of(TEXT, NUMBERS, TIMES, FILES)


@st.composite
def command_lines(draw: st.DrawFn, commands: list[str]) -> list[str]:
    """A command line that mostly gets past option parsing, into the command itself."""
    command = draw(st.sampled_from(commands))
    args = [command]
    if command == "maintenance":
        args += [draw(st.sampled_from(["on", "off"]) | TEXT), draw(MODELS | TEXT)]
        args += ["--log", LOG, "--reason", draw(TEXT)] if draw(st.integers(0, 9)) else []
    elif command != "demo":
        args.append(draw(st.just(LOG) | FILES | TEXT) if draw(st.integers(0, 9)) else LOG)
    options = OPTIONS[command]
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=4)):
        args.append(name)
        values = options[name]
        if values is not None:
            args.append(draw(values))
    if draw(st.integers(0, 9)) == 0:  # now and then a stray argument anywhere
        args.insert(draw(st.integers(1, len(args))), draw(ANY))
    return [a for a in args if not _might_follow(command, a)]


def _might_follow(command: str, arg: str) -> bool:
    """Could click read ``arg`` as ``timeline --follow`` (or its ``-f``)?"""
    return command == "timeline" and arg.startswith("-") and arg.lstrip("-").startswith("f")


def _rows(log: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{log.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT seq, type, at, writer, body FROM events ORDER BY seq"
        ).fetchall()


def _check(args: list[str], folder: Path) -> None:
    log = folder / LOG
    before_bytes = log.read_bytes()
    before_rows = _rows(log)
    with contextlib.chdir(folder):
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    exception = result.exception
    assert exception is None or isinstance(exception, SystemExit), (args, result.exc_info)
    assert result.exit_code in {0, 1, 2}, (args, result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr, (args, result.stderr)
    if args[0] == "maintenance":
        assert _rows(log)[: len(before_rows)] == before_rows, args
    else:
        assert log.read_bytes() == before_bytes, args


@pytest.fixture(scope="module")
def folders(
    incident_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # a callable: each example gets a folder with a fresh copy of the log
    def fresh() -> Path:
        folder = tmp_path_factory.mktemp("fuzz")
        shutil.copyfile(incident_source, folder / LOG)
        return folder

    return fresh


FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(args=command_lines([c for c in OPTIONS if c != "demo"]))
def test_commands_with_random_arguments(folders: Any, args: list[str]) -> None:
    _check(args, folders())


@settings(FUZZ, max_examples=30)
@given(args=command_lines(["demo"]))
def test_the_demo_with_random_arguments(folders: Any, args: list[str]) -> None:
    _check(args, folders())
