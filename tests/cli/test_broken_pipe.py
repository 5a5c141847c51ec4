"""`failover timeline BIG | head`: when the reader goes away, the command ends quietly with
exit code 0 (issue #12), so ``set -o pipefail`` scripts do not fail on it."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devs.risks.multi_model_failover import ErrorKind, SQLiteEventStore
from devs.risks.multi_model_failover.core.events import AttemptFailed, EngineStarted

from .conftest import failover_command

EVENTS = 3_000  # about 600 kB of timeline: far more than a pipe's buffer


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "events.sqlite3"
    start = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    with SQLiteEventStore(path) as store:
        store.append(EngineStarted(at=start, models=("primary", "secondary")))
        for index in range(EVENTS):
            store.append(
                AttemptFailed(
                    at=start + timedelta(seconds=index),
                    call_id=f"call-{index}",
                    model_id="primary",
                    attempt=1,
                    latency=0.5,
                    error_kind=ErrorKind.SERVER,
                    message="503 Service Unavailable: " + "x" * 120,
                )
            )
    return path


def _reader_goes_away(
    args: list[object], read: int, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run `failover ARGS`, read ``read`` bytes of its output, close the pipe; (code, stderr)."""
    with subprocess.Popen(  # noqa: S603 - our own command line
        [*failover_command(), *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env} if env is not None else None,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        if read:
            assert process.stdout.read(read)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        return process.wait(timeout=60), stderr


@pytest.mark.parametrize("args", [["timeline"], ["timeline", "--json"]], ids=["text", "json"])
def test_head_on_a_long_timeline_exits_0_quietly(big_log: Path, args: list[str]) -> None:
    code, stderr = _reader_goes_away([args[0], big_log, *args[1:]], read=1_000)
    assert stderr == ""
    assert code == 0


def test_with_colours_forced_exits_0_quietly(big_log: Path) -> None:
    # rich writes the lines then, and handles a broken pipe its own way (exit 1).
    code, stderr = _reader_goes_away(["timeline", big_log], read=1_000, env={"FORCE_COLOR": "1"})
    assert stderr == ""
    assert code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["timeline", "LOG"],
        ["state", "LOG"],
        ["state", "LOG", "--json"],
        ["metrics", "LOG"],
        ["metrics", "LOG", "--format", "json"],
        ["metrics", "LOG", "--format", "prometheus"],
        ["audit", "LOG"],
        ["verify", "LOG", "--expect", "attempt_failed"],
        ["--help"],
    ],
    ids=lambda args: "-".join(a.strip("-") for a in args if a != "LOG"),
)
def test_every_command_exits_0_when_nobody_reads(big_log: Path, args: list[str]) -> None:
    # The pipe is closed before the command writes: even a short output meets a broken pipe,
    # at the latest when Python flushes stdout on the way out.
    code, stderr = _reader_goes_away([big_log if a == "LOG" else a for a in args], read=0)
    assert stderr == ""
    assert code == 0
