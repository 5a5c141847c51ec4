"""`failover demo --log PATH` replaces only a log the demo itself wrote (issue #12).

A log is the demo's when it says so (a ``written_by`` row in its ``meta`` table): model ids
that happen to match the demo's (primary, secondary, tertiary) prove nothing.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devs.risks.multi_model_failover import SQLiteEventStore
from devs.risks.multi_model_failover.core.events import EngineStarted

RunProcess = Callable[..., subprocess.CompletedProcess[str]]
Files = dict[str, tuple[bytes, int] | None]


def _fingerprint(path: Path) -> Files:
    """Content and mtime (ns) of the log and its -wal/-shm; None where a file is absent."""
    found: Files = {}
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        found[suffix] = (file.read_bytes(), file.stat().st_mtime_ns) if file.is_file() else None
    return found


def _production_log(path: Path) -> None:
    """A real log whose model ids are a subset of the demo's: not the demo's all the same."""
    with SQLiteEventStore(path) as store:
        store.append(EngineStarted(at=datetime.now(UTC), models=("primary", "secondary")))


@contextmanager
def _held_open(path: Path) -> Iterator[None]:
    """Keep a reader on the log, as a running service would: its -wal and -shm stay."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()
        yield


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("failover: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_real_log_with_the_demos_model_ids_is_left_alone(
    run_process: RunProcess, tmp_path: Path
) -> None:
    log = tmp_path / "prod.sqlite3"
    _production_log(log)
    with _held_open(log):
        before = _fingerprint(log)
        assert before["-wal"] is not None
        assert before["-shm"] is not None
        line = _refused(run_process("demo", "--log", log))
        assert _fingerprint(log) == before
    assert str(log) in line
    assert "not written by the demo" in line


def _not_sqlite(path: Path) -> None:
    path.write_text("these are my notes\n" * 50)


def _empty(path: Path) -> None:
    path.touch()


def _foreign_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()


def _event_log_with_meta_but_no_mark(path: Path) -> None:
    _production_log(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('written_by', 'the billing service')")
        conn.commit()


@pytest.mark.parametrize(
    "make",
    [_not_sqlite, _empty, _foreign_database, _event_log_with_meta_but_no_mark],
    ids=["not-sqlite", "empty", "foreign-database", "another-writer"],
)
def test_any_other_file_is_refused_untouched(
    run_process: RunProcess, tmp_path: Path, make: Callable[[Path], None]
) -> None:
    log = tmp_path / "events.sqlite3"
    make(log)
    before = _fingerprint(log)
    line = _refused(run_process("demo", "--log", log))
    assert str(log) in line
    assert _fingerprint(log) == before


def test_a_directory_is_refused_untouched(run_process: RunProcess, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep me")
    _refused(run_process("demo", "--log", folder))
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_the_demo_marks_its_log_and_replaces_it_on_a_rerun(
    run_process: RunProcess, tmp_path: Path
) -> None:
    log = tmp_path / "demo.sqlite3"
    first = run_process("demo", "--log", log, "--seed", "3")
    assert first.returncode == 0, first.stderr
    with closing(sqlite3.connect(log)) as conn:
        mark = conn.execute("SELECT value FROM meta WHERE key = 'written_by'").fetchone()
    assert mark == ("failover demo",)
    again = run_process("demo", "--log", log, "--seed", "3")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""


def test_a_journal_left_without_its_database_is_refused_untouched(
    run_process: RunProcess, tmp_path: Path
) -> None:
    # A new log at that path would take the stale WAL for its own.
    log = tmp_path / "events.sqlite3"
    wal = Path(f"{log}-wal")
    wal.write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 60)
    before = (wal.read_bytes(), wal.stat().st_mtime_ns)
    _refused(run_process("demo", "--log", log))
    assert (wal.read_bytes(), wal.stat().st_mtime_ns) == before
    assert not log.exists()
