"""Live Prometheus metrics of a running engine: the fold's figures plus the log's own health."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devs.risks.multi_model_failover import MultiModelFailover, replay
from devs.risks.multi_model_failover.adapters.exposition import prometheus_text

pytestmark = pytest.mark.anyio


class Echo:
    async def call(self, prompt: str) -> str:
        return prompt.upper()

    async def health_check(self) -> bool:
        return True


def samples(text: str) -> dict[str, float]:
    """Sample name (with labels) -> value, from Prometheus text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def test_live_metrics_match_the_replay_and_add_the_log_health(tmp_path: Path) -> None:
    fo = MultiModelFailover({"echo": Echo()}, event_store=tmp_path / "events.sqlite3")
    assert await fo.call("hi") == "HI"
    live = samples(fo.prometheus_text())
    assert live["failover_event_log_errors_total{}"] == 0
    assert live["failover_event_log_dropped_total{}"] == 0
    await fo.aclose()
    replayed = samples(prometheus_text(replay(tmp_path / "events.sqlite3")))
    # The replay also holds engine_stopped; every figure but the event count agrees.
    for name, value in live.items():
        if name.startswith(("failover_event_log_", "failover_log_")):
            continue
        assert replayed[name] == value, name


async def test_a_failing_log_shows_in_event_log_errors_while_calls_succeed(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    fo = MultiModelFailover({"echo": Echo()}, event_store=path)
    await fo.call("warm up")  # the file and its table exist
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        assert await fo.call("still answered") == "STILL ANSWERED"
        # The call's events are journaled: the writer meets the fault at its next batch.
        assert not fo.event_store.flush(timeout=5)  # type: ignore[attr-defined]
        errors = samples(fo.prometheus_text())["failover_event_log_errors_total{}"]
        assert errors >= 1
        conn.execute("DROP TRIGGER refuse")
    await fo.aclose()
    assert replay(path).metrics.calls_succeeded == 2  # written once the fault cleared
