"""One replica of the fleet test: an engine on the shared PostgreSQL log, calling in a loop.

``python fleet_worker.py URL REPLICA CONTROL_DIR [--blind]`` runs calls one after another
(with a short pause) until the file ``CONTROL_DIR/stop-REPLICA`` appears. It prints one JSON
line per call that returned (``{"call_id": ..., "model": ...}``), flushed at once, so the
parent knows exactly which calls returned before any kill. On a clean stop it follows the log
one last time and prints ``{"metrics": ...}``: this replica's live view of the whole fleet.

``--blind``: this replica never judges health itself (no probe round during the test, failure
thresholds out of reach), so whatever it knows of the providers' health it learned from the
other replicas through the shared log.

The provider: ``primary`` answers until ``CONTROL_DIR/primary-down`` exists, then fails its
calls and its probes; ``secondary`` and ``tertiary`` always answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import msgspec

from devs.risks.multi_model_failover import ModelError, MultiModelFailover


class Provider:
    """A model shared by the whole fleet: down while its flag file exists."""

    def __init__(self, name: str, control: Path) -> None:
        self.name = name
        self.down_flag = control / f"{name}-down"

    async def call(self, prompt: str) -> str:
        await anyio.sleep(0.002)
        if self.down_flag.exists():
            raise ModelError(f"{self.name} is down", kind="server_error")
        return f"{self.name}: {prompt}"

    async def health_check(self) -> bool:
        return not self.down_flag.exists()


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def main(url: str, replica: str, control: Path, blind: bool) -> None:
    clients = {name: Provider(name, control) for name in ("primary", "secondary", "tertiary")}
    stop = control / f"stop-{replica}"
    never = 1_000_000
    fo = MultiModelFailover(
        clients,
        {"max_attempts": 1},
        health_check_interval=3600 if blind else 0.2,
        health_policy={"degraded_after": never, "unhealthy_after": never} if blind else None,
        event_store=url,
        replica=replica,
        durability="process",
    )
    async with fo:
        emit({"ready": replica})
        n = 0
        while not stop.exists():
            n += 1
            outcome = await fo.call_with_outcome(f"{replica}-{n}")
            emit({"call_id": outcome.call_id, "model": outcome.model_id})
            await anyio.sleep(0.005)
        await fo.follow()
        emit({"metrics": msgspec.to_builtins(fo.metrics())})


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]), "--blind" in sys.argv[4:])
