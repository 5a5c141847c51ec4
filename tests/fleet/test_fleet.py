"""A fleet: three engine processes (replicas) share one PostgreSQL log.

The story, checked from the shared log itself (each event carries the replica that wrote it):

1. the primary provider goes down: every replica stops sending to it within one second of the
   first failed probe. Only replica-a probes and judges health; b and c are blind (no probes,
   failure thresholds out of reach), so they can only have learned it from the shared log;
2. an operator runs ``failover maintenance on secondary --log postgresql://...``: every replica
   stops sending to the secondary within one second;
3. one replica is killed with SIGKILL mid-call: none of the calls it had returned is missing;
4. ``replay`` of the shared log equals what the last replica standing saw live, and its calls
   are the sum of the three replicas' calls.

Skipped, saying why, where no PostgreSQL server can be started.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")

from devs.risks.multi_model_failover import replay
from devs.risks.multi_model_failover.core.projections import Metrics
from devs.risks.multi_model_failover.storage.postgres import PostgresEventStore

WORKER = Path(__file__).with_name("fleet_worker.py")
REPLICAS = ("replica-a", "replica-b", "replica-c")
WITHIN = 1.0  # seconds: the promise of the issue
GUARD = 30.0  # seconds: a hang guard, not a timing


class Replica:
    """A worker process and the JSON lines it printed, read on a thread."""

    def __init__(self, name: str, url: str, control: Path, *, blind: bool) -> None:
        self.name = name
        flags = ["--blind"] if blind else []
        self.process = subprocess.Popen(  # noqa: S603 - our own script, fixed interpreter
            [sys.executable, str(WORKER), url, name, str(control), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self.returned: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.records.put(json.loads(line))

    def drain(self) -> None:
        """Take in what the worker printed so far."""
        while not self.records.empty():
            record = self.records.get()
            if "call_id" in record:
                self.returned.append(record)
            elif "metrics" in record:
                self.metrics = record["metrics"]

    def wait_ready(self) -> None:
        record = self.records.get(timeout=GUARD)
        assert record == {"ready": self.name}, record

    def wait_exit(self) -> int:
        code = self.process.wait(timeout=GUARD)
        time.sleep(0.1)  # the reader thread takes the last lines
        self.drain()
        return code

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def close(self) -> None:
        """Kill the worker if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=GUARD)
        self._reader.join(timeout=GUARD)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, list[Replica]]]:
    url = pg_url
    PostgresEventStore(url).close()  # the schema, before three replicas race to create it
    control = tmp_path / "control"
    control.mkdir()
    replicas = [Replica(name, url, control, blind=name != REPLICAS[0]) for name in REPLICAS]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield url, control, replicas
    finally:
        for replica in replicas:
            replica.close()


def rows(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with PostgresEventStore(url, create=False) as store:
        return store.query(sql, params)


def at(value: int | str | datetime) -> datetime:
    """A stored time stamp (microseconds since the epoch, ISO text in an older log, or a
    datetime where the column is a timestamp)."""
    if isinstance(value, int):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def wait_for(url: str, sql: str, params: tuple[object, ...] = ()) -> Any:
    """Poll the shared log until ``sql`` gives a non-null value; return it."""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        value = rows(url, sql, params)[0][0]
        if value is not None:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true in the shared log: {sql}")


def last_attempts_by_replica(url: str, model: str) -> dict[str, datetime]:
    """Each replica's last attempt on ``model``, trial calls aside."""
    found = rows(
        url,
        "SELECT writer, max(at) FROM events WHERE type = 'attempt_started' AND model_id = ? "
        "AND NOT body LIKE '%\"trial\":true%' GROUP BY writer",
        (model,),
    )
    return {writer: at(last) for writer, last in found}


def trials_by_replica(url: str, model: str) -> dict[str, int]:
    """How many trial calls each replica made on ``model``."""
    found = rows(
        url,
        "SELECT writer, count(*) FROM events WHERE type = 'attempt_started' AND model_id = ? "
        "AND body LIKE '%\"trial\":true%' GROUP BY writer",
        (model,),
    )
    return {writer: int(count) for writer, count in found}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    failover = Path(sys.executable).with_name("failover")
    command = (
        [str(failover)]
        if failover.exists()
        else [sys.executable, "-m", "devs.risks.multi_model_failover.adapters.cli"]
    )
    return subprocess.run(  # noqa: S603 - our own command line
        [*command, *args], capture_output=True, text=True, timeout=GUARD, check=False
    )


@pytest.mark.timeout(120)
def test_a_fleet_shares_health_maintenance_and_one_log(
    fleet: tuple[str, Path, list[Replica]],
) -> None:
    url, control, replicas = fleet
    time.sleep(0.5)  # every replica serves from the primary for a while

    # 1. The provider goes down; from the first failed probe on, within a second, nobody
    #    sends to it any more, but for trial calls: one at a time per replica, each at least
    #    trial_after (1 s) after the replica's last failure there.
    (control / "primary-down").touch()
    first_failed_probe = at(
        wait_for(
            url,
            "SELECT min(at) FROM events WHERE type = 'health_probe' AND model_id = 'primary' "
            "AND body LIKE '%\"ok\":false%'",
        )
    )
    time.sleep(WITHIN + 0.5)
    for replica, last in last_attempts_by_replica(url, "primary").items():
        late = (last - first_failed_probe).total_seconds()
        assert late <= WITHIN, f"{replica} still sent to the primary {late:.3f}s after"
    for replica, count in trials_by_replica(url, "primary").items():
        assert count <= 2, f"{replica} made {count} trial calls in 1.5 s"
    judges = rows(url, "SELECT DISTINCT writer FROM events WHERE type = 'state_changed'")
    assert judges == [(REPLICAS[0],)]  # b and c stopped on a's word alone

    # 2. The operator puts the secondary into maintenance, once, for the whole fleet.
    done = run_cli(
        "maintenance",
        "on",
        "secondary",
        "--log",
        url,
        "--reason",
        "provider migration",
        "--by",
        "oncall",
    )
    assert done.returncode == 0, done.stderr
    switched = at(wait_for(url, "SELECT max(at) FROM events WHERE type = 'maintenance'"))
    time.sleep(WITHIN + 0.5)
    for replica, last in last_attempts_by_replica(url, "secondary").items():
        late = (last - switched).total_seconds()
        assert late <= WITHIN, f"{replica} still sent to the secondary {late:.3f}s after"
    for replica in replicas:
        replica.drain()
    served = Counter(r["model"] for replica in replicas for r in replica.returned)
    assert served["tertiary"] > 0

    # 3. One replica dies mid-call; then the others stop cleanly, one after the other.
    killed, second, last_standing = replicas[2], replicas[1], replicas[0]
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait_exit() == -signal.SIGKILL
    (control / f"stop-{second.name}").touch()
    assert second.wait_exit() == 0, second.stderr()
    (control / f"stop-{last_standing.name}").touch()
    assert last_standing.wait_exit() == 0, last_standing.stderr()

    succeeded = {
        call_id
        for (call_id,) in rows(url, "SELECT call_id FROM events WHERE type = 'call_succeeded'")
    }
    for replica in replicas:
        returned = {r["call_id"] for r in replica.returned}
        assert returned, f"{replica.name} returned no call"
        missing = returned - succeeded
        assert not missing, f"{replica.name}: returned calls missing from the log: {missing}"

    # 4. The shared log replays to what the last replica saw live, and its calls are the
    #    three replicas' calls.
    replayed = replay(url)
    assert last_standing.metrics is not None
    assert msgspec.convert(last_standing.metrics, Metrics) == replayed.metrics
    by_writer = dict(
        rows(
            url, "SELECT writer, count(*) FROM events WHERE type = 'call_succeeded' GROUP BY writer"
        )
    )
    assert set(by_writer) == set(REPLICAS)
    assert sum(by_writer.values()) == replayed.metrics.calls_succeeded
    assert by_writer[second.name] == len(second.returned)  # a clean stop: exactly its calls
    assert by_writer[last_standing.name] == len(last_standing.returned)
    assert by_writer[killed.name] >= len(killed.returned)  # and maybe one it never returned
