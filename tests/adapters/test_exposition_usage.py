"""Token and cost counters in the Prometheus exposition of a running engine and of its log."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devs.risks.multi_model_failover import (
    ErrorKind,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.adapters.exposition import LiveCollector, prometheus_text
from devs.risks.multi_model_failover.core.pricing import Price
from devs.risks.multi_model_failover.core.responses import Usage

pytestmark = pytest.mark.anyio

USAGE_FAMILIES = (
    "failover_input_tokens_total",
    "failover_output_tokens_total",
    "failover_cost_usd_total",
)


class Billed:
    """Answers with ``usage``; when ``fail`` is set, fails every call, reporting ``usage``."""

    def __init__(self, usage: Usage | None, *, fail: bool = False) -> None:
        self.usage = usage
        self.fail = fail

    async def call(self, prompt: str) -> ModelResponse | str:
        if self.fail:
            raise ModelError("500 internal error", kind=ErrorKind.SERVER, usage=self.usage)
        if self.usage is None:
            return prompt
        return ModelResponse(text=prompt, model="served", usage=self.usage)

    async def health_check(self) -> bool:
        return True


def usage_samples(text: str) -> dict[str, dict[str, float]]:
    """Usage family sample name -> model -> value, parsed by prometheus_client."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in USAGE_FAMILIES:
                found.setdefault(sample.name, {})[sample.labels["model"]] = sample.value
    return found


async def test_live_usage_counters_follow_each_call_and_match_the_replay(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover(
        {
            # Fails, but its provider reported (and billed) the prompt's tokens.
            "flaky": Billed(Usage(input_tokens=2_000, output_tokens=0), fail=True),
            "priced": Billed(Usage(input_tokens=100, output_tokens=40)),
        },
        {"max_attempts": 1},
        event_store=log,
        prices={"flaky": Price(input=1.0, output=2.0), "priced": Price(input=2.5, output=10.0)},
    )
    await fo.call("one")
    first = usage_samples(fo.prometheus_text())
    assert first["failover_input_tokens_total"] == {"flaky": 2_000, "priced": 100}
    await fo.call("two")
    live = usage_samples(fo.prometheus_text())
    assert live["failover_input_tokens_total"] == {"flaky": 4_000, "priced": 200}
    assert live["failover_output_tokens_total"] == {"flaky": 0, "priced": 80}
    cost = live["failover_cost_usd_total"]
    assert math.isclose(cost["flaky"], 2 * 2_000 * 1.0 / 1e6)
    assert math.isclose(cost["priced"], 2 * (100 * 2.5 + 40 * 10.0) / 1e6)
    metrics = fo.metrics()
    assert metrics.cost is not None
    assert math.isclose(sum(cost.values()), metrics.cost)
    await fo.aclose()
    assert usage_samples(prometheus_text(replay(log))) == live


async def test_a_model_without_a_price_has_tokens_and_no_cost_series() -> None:
    fo = MultiModelFailover(
        {"unpriced": Billed(Usage(input_tokens=7, output_tokens=3))},
        prices={},
    )
    await fo.call("hi")
    found = usage_samples(fo.prometheus_text())
    await fo.aclose()
    assert found["failover_input_tokens_total"] == {"unpriced": 7}
    assert found["failover_output_tokens_total"] == {"unpriced": 3}
    assert "failover_cost_usd_total" not in found


async def test_a_client_without_usage_counts_zero_tokens_and_costs_nothing_known() -> None:
    fo = MultiModelFailover({"plain": Billed(None)}, prices={"plain": Price(input=1.0, output=1.0)})
    await fo.call("hi")
    found = usage_samples(fo.prometheus_text())
    await fo.aclose()
    assert found == {
        "failover_input_tokens_total": {"plain": 0},
        "failover_output_tokens_total": {"plain": 0},
    }


async def test_a_registered_live_collector_serves_the_usage_counters() -> None:
    fo = MultiModelFailover(
        {"m": Billed(Usage(input_tokens=1_000_000, output_tokens=500_000))},
        prices={"m": {"input": 3.0, "output": 15.0}},
    )
    await fo.call("hi")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveCollector(fo))
    text = generate_latest(registry).decode()
    await fo.aclose()
    assert "# TYPE failover_cost_usd_total counter" in text
    assert usage_samples(text)["failover_cost_usd_total"] == {"m": 10.5}
