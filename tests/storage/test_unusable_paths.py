"""A path that cannot hold an event log: one ``EventLogError`` naming the path and the cause,
and nothing created or changed (issue #12)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from devs.risks.multi_model_failover import MultiModelFailover
from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore


class Quiet:
    """A model client that is never called."""

    def call(self, prompt: str) -> str:
        return prompt

    def health_check(self) -> bool:
        return True


def refused(path: str | Path) -> str:
    """The message of the ``EventLogError`` that opening ``path`` raises, as a writer would."""
    with pytest.raises(EventLogError) as raised:
        SQLiteEventStore(path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("mine")
    path = tmp_path / "notes" / "events.sqlite3"
    message = refused(path)
    assert str(path) in message
    assert "is a file, not a directory" in message
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_file_where_a_folder_further_up_should_be(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("mine")
    path = tmp_path / "notes" / "logs" / "events.sqlite3"
    message = refused(path)
    assert str(path) in message
    assert "Not a directory" in message
    assert (tmp_path / "notes").read_text() == "mine"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_cannot_be_made() -> None:
    message = refused("/proc/nope/x.sqlite3")
    assert "/proc/nope/x.sqlite3" in message
    assert "No such file or directory" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write")
def test_a_folder_without_write_permission(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    message = refused(folder / "events.sqlite3")
    assert str(folder / "events.sqlite3") in message
    assert "Permission denied" in message
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_a_folder_nobody_may_write_to() -> None:
    # sysfs refuses new files even to root: a permission error wherever the tests run.
    message = refused("/sys/failover-events.sqlite3")
    assert "/sys/failover-events.sqlite3" in message
    assert "Permission denied" in message


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_path(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert f"the path is {path!r}" in refused(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
@pytest.mark.parametrize("create", [True, False])
def test_a_device_is_not_a_log(create: bool) -> None:
    with pytest.raises(EventLogError, match="/dev/null is a device, pipe or socket"):
        SQLiteEventStore("/dev/null", create=create)


@pytest.mark.parametrize("create", [True, False])
def test_a_schema_version_that_is_not_a_number_is_named(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(EventLogError, match=r"events\.sqlite3: meta\.schema_version is 'one'"):
        SQLiteEventStore(path, create=create)


def test_the_engine_names_the_path_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("mine")
    path = tmp_path / "notes" / "events.sqlite3"
    with pytest.raises(EventLogError, match=f"cannot create event log {path}"):
        MultiModelFailover([Quiet()], event_store=str(path))
    with pytest.raises(EventLogError, match="the path is ''"):
        MultiModelFailover([Quiet()], event_store="")
