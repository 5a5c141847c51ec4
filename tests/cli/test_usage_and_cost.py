"""Token usage and cost in `failover metrics` (text, JSON, Prometheus) and `failover report`.

The logs are written by a real MultiModelFailover whose clients report usage; the commands run
as a user runs them. A log with no usage at all prints exactly the tables it always printed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from pathlib import Path

import anyio
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import Result

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    Metrics,
    ModelError,
    ModelResponse,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.adapters.cli.demo import VirtualClock
from devs.risks.multi_model_failover.adapters.cli.render import MODEL_HEADERS, cost_text
from devs.risks.multi_model_failover.core.pricing import Price
from devs.risks.multi_model_failover.core.responses import Usage

from .conftest import START

Run = Callable[..., Result]
CALLS = 5
FAILING_CALL = 2  # the primary fails this call, reporting the prompt's tokens as billed
# primary: 4 answers of 1,200 in / 300 out and one failure of 1,000 in; secondary: 500 / 50.
PRIMARY_PRICE = Price(input=3.0, output=15.0)
PRIMARY_COST = (4 * (1_200 * 3.0 + 300 * 15.0) + 1_000 * 3.0) / 1e6  # $0.0354


class Billed:
    """Answers with the usage it was given; fails call number ``fail_on`` (from 0), reporting
    ``failed_usage`` for it."""

    def __init__(
        self, usage: Usage, *, fail_on: int | None = None, failed_usage: Usage | None = None
    ) -> None:
        self.usage = usage
        self.fail_on = fail_on
        self.failed_usage = failed_usage
        self.calls = 0

    async def call(self, prompt: str) -> ModelResponse:
        index, self.calls = self.calls, self.calls + 1
        if index == self.fail_on:
            raise ModelError("503 overloaded", kind=ErrorKind.SERVER, usage=self.failed_usage)
        return ModelResponse(text=f"answer to {prompt}", model="served", usage=self.usage)

    async def health_check(self) -> bool:
        return True


class Plain:
    """A client that answers with a bare string: no usage."""

    async def call(self, prompt: str) -> str:
        return prompt

    async def health_check(self) -> bool:
        return True


async def write_log(
    path: Path, clients: Mapping[str, object], prices: Mapping[str, Price] | None
) -> None:
    """``CALLS`` calls through a real engine into the log at ``path``."""
    clock = VirtualClock(START)
    fo = MultiModelFailover(
        clients,
        {"max_attempts": 1},
        event_store=str(path),
        sleep=clock.sleep,
        clock=clock.monotonic,
        wall_clock=clock.wall,
        prices=prices,
    )
    try:
        for index in range(CALLS):
            with contextlib.suppress(AllModelsFailedError):
                await fo.call(f"question {index}")
            await clock.sleep(1.0)
    finally:
        await fo.aclose()


def _clients() -> dict[str, object]:
    return {
        "primary": Billed(
            Usage(input_tokens=1_200, output_tokens=300),
            fail_on=FAILING_CALL,
            failed_usage=Usage(input_tokens=1_000),
        ),
        "secondary": Billed(Usage(input_tokens=500, output_tokens=50)),
    }


@pytest.fixture(scope="module")
def priced_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Usage from both models; only the primary has a price."""
    path = tmp_path_factory.mktemp("priced") / "events.sqlite3"
    anyio.run(write_log, path, _clients(), {"primary": PRIMARY_PRICE})
    return path


@pytest.fixture(scope="module")
def unpriced_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same usage, no price at all."""
    path = tmp_path_factory.mktemp("unpriced") / "events.sqlite3"
    anyio.run(write_log, path, _clients(), None)
    return path


@pytest.fixture(scope="module")
def plain_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clients that report no usage, though a price is configured."""
    path = tmp_path_factory.mktemp("plain") / "events.sqlite3"
    anyio.run(write_log, path, {"plain": Plain()}, {"plain": PRIMARY_PRICE})
    return path


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def table(out: str, title: str) -> list[list[str]]:
    """The plain-text table under ``title``: its header row, then its body rows, as cells
    (columns are two or more spaces apart)."""
    lines = out.splitlines()
    start = lines.index(title) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    header, rule, *body = rows
    assert set("".join(rule)) == {"-"}
    return [header, *body]


def by_first_cell(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row for row in rows[1:]}


# -- text ------------------------------------------------------------------------------------


def test_metrics_text_shows_tokens_and_cost_per_model(run_cli: Run, priced_log: Path) -> None:
    out = ok(run_cli("metrics", priced_log))
    header, *_ = rows = table(out, "per model")
    assert header == [*MODEL_HEADERS, "input tokens", "output tokens", "cost"]
    models = by_first_cell(rows)
    assert models["primary"][1:4] == ["5", "4", "1"]  # attempts, ok, failed
    assert models["primary"][-3:] == ["5,800", "1,200", "$0.0354"]
    # Usage without a price: the tokens, and a cost nobody knows.
    assert models["secondary"][-3:] == ["500", "50", "-"]


def test_metrics_text_totals_add_tokens_and_cost(run_cli: Run, priced_log: Path) -> None:
    totals = by_first_cell(table(ok(run_cli("metrics", priced_log)), "totals"))
    assert totals["input tokens"] == ["input tokens", "6,300"]
    assert totals["output tokens"] == ["output tokens", "1,250"]
    # The total is what the priced models cost; the unpriced one adds nothing it could know.
    assert totals["cost"] == ["cost", "$0.0354"]
    assert totals["calls"] == ["calls", str(CALLS)]


def test_usage_without_any_price_shows_tokens_and_no_cost(run_cli: Run, unpriced_log: Path) -> None:
    out = ok(run_cli("metrics", unpriced_log))
    models = by_first_cell(table(out, "per model"))
    assert models["primary"][-3:] == ["5,800", "1,200", "-"]
    assert models["secondary"][-3:] == ["500", "50", "-"]
    totals = by_first_cell(table(out, "totals"))
    assert totals["input tokens"][1] == "6,300"
    assert totals["cost"] == ["cost", "-"]
    assert "$" not in out


def test_a_log_without_usage_prints_the_tables_it_always_printed(
    run_cli: Run, plain_log: Path, incident_log: Path
) -> None:
    for log in (plain_log, incident_log):
        out = ok(run_cli("metrics", log))
        assert table(out, "per model")[0] == list(MODEL_HEADERS)
        assert [row[0] for row in table(out, "totals")] == [
            "figure", "calls", "calls succeeded", "calls failed", "calls cancelled", "attempts",
            "failed attempts", "retries", "failovers", "backoffs", "retry budget exhausted",
            "health probes", "state changes",
        ]  # fmt: skip
        assert "tokens" not in out
        assert "cost" not in out
        assert "$" not in out


def test_usage_on_a_terminal(run_cli: Run, priced_log: Path) -> None:
    result = run_cli("metrics", priced_log, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert result.exit_code == 0
    assert "\x1b[" in result.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "output tokens" in plain
    assert "$0.0354" in plain
    assert "5,800" in plain


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (None, "-"),
        (0.0, "$0.00"),
        (12.345678, "$12.35"),
        (1_234.5, "$1,234.50"),
        (0.5, "$0.50"),
        (0.0123, "$0.0123"),
        (0.012345, "$0.0123"),
        (0.000042, "$0.000042"),
        (0.9999999, "$1.00"),
    ],
)
def test_costs_print_with_the_precision_they_need(usd: float | None, shown: str) -> None:
    assert cost_text(usd) == shown


# -- JSON ------------------------------------------------------------------------------------


def test_metrics_json_carries_tokens_and_cost(run_cli: Run, priced_log: Path) -> None:
    out = ok(run_cli("metrics", priced_log, "--format", "json"))
    doc = msgspec.json.decode(out)
    assert (doc["input_tokens"], doc["output_tokens"]) == (6_300, 1_250)
    assert math.isclose(doc["cost"], PRIMARY_COST)
    primary, secondary = doc["by_model"]["primary"], doc["by_model"]["secondary"]
    assert (primary["input_tokens"], primary["output_tokens"]) == (5_800, 1_200)
    assert math.isclose(primary["cost"], PRIMARY_COST)
    assert (secondary["input_tokens"], secondary["output_tokens"]) == (500, 50)
    assert secondary["cost"] is None  # unknown, not free
    assert msgspec.json.decode(out, type=Metrics) == replay(priced_log).metrics


def test_metrics_json_of_a_log_without_usage(run_cli: Run, plain_log: Path) -> None:
    doc = msgspec.json.decode(ok(run_cli("metrics", plain_log, "--format", "json")))
    assert (doc["input_tokens"], doc["output_tokens"], doc["cost"]) == (0, 0, None)
    assert doc["by_model"]["plain"]["cost"] is None


# -- Prometheus ------------------------------------------------------------------------------


def prometheus(run_cli: Run, log: Path) -> dict[str, dict[str, float]]:
    """Family name -> model label -> value, for the usage families of ``metrics --format
    prometheus`` (parsed by prometheus_client's own parser)."""
    text = ok(run_cli("metrics", log, "--format", "prometheus"))
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "model" in sample.labels and sample.name.endswith("_total"):
                found.setdefault(sample.name, {})[sample.labels["model"]] = sample.value
    return found


def test_prometheus_counts_tokens_and_cost_per_model(run_cli: Run, priced_log: Path) -> None:
    found = prometheus(run_cli, priced_log)
    assert found["failover_input_tokens_total"] == {"primary": 5_800, "secondary": 500}
    assert found["failover_output_tokens_total"] == {"primary": 1_200, "secondary": 50}
    # Only a model whose cost is known has a cost series: a 0 would say "free".
    assert found["failover_cost_usd_total"].keys() == {"primary"}
    assert math.isclose(found["failover_cost_usd_total"]["primary"], PRIMARY_COST)


def test_prometheus_without_prices_has_tokens_and_no_cost(run_cli: Run, unpriced_log: Path) -> None:
    found = prometheus(run_cli, unpriced_log)
    assert found["failover_input_tokens_total"] == {"primary": 5_800, "secondary": 500}
    assert "failover_cost_usd_total" not in found


def test_prometheus_without_usage_counts_zero_tokens(run_cli: Run, plain_log: Path) -> None:
    found = prometheus(run_cli, plain_log)
    assert found["failover_input_tokens_total"] == {"plain": 0}
    assert found["failover_output_tokens_total"] == {"plain": 0}
    assert "failover_cost_usd_total" not in found
    assert found["failover_attempts_total"] == {"plain": CALLS}


# -- the HTML report -------------------------------------------------------------------------


class Tables(HTMLParser):
    """Each table's rows (header row first) by the heading above it; the cards' values."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.cards: dict[str, str] = {}
        self._heading: str | None = None
        self._text: list[str] | None = None
        self._row: list[str] | None = None
        self._card: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._text = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._text = []
        elif tag == "div" and "card" in (dict(attrs).get("class") or "").split():
            self._card = []
        elif tag in ("b", "span") and self._card is not None:
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text or [])
        if tag == "h2":
            self._heading, self._text = text, None
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
            self._text = None
        elif tag == "tr" and self._row is not None and self._heading is not None:
            self.tables.setdefault(self._heading, []).append(self._row)
            self._row = None
        elif tag in ("b", "span") and self._card is not None:
            self._card.append(text)
            self._text = None
            if len(self._card) == 2:
                value, label = self._card
                self.cards[label] = value
                self._card = None


def report(run_cli: Run, log: Path, tmp_path: Path) -> Tables:
    page = tmp_path / f"{log.parent.name}.html"
    ok(run_cli("report", log, "-o", page))
    parsed = Tables()
    parsed.feed(page.read_text())
    return parsed


def test_report_shows_tokens_and_cost_per_model(
    run_cli: Run, priced_log: Path, tmp_path: Path
) -> None:
    parsed = report(run_cli, priced_log, tmp_path)
    rows = parsed.tables["Metrics per model"]
    assert rows[0] == [*MODEL_HEADERS, "input tokens", "output tokens", "cost"]
    models = by_first_cell(rows)
    assert models["primary"][-3:] == ["5,800", "1,200", "$0.0354"]
    assert models["secondary"][-3:] == ["500", "50", "-"]
    assert parsed.cards["input tokens"] == "6,300"
    assert parsed.cards["output tokens"] == "1,250"
    assert parsed.cards["cost"] == "$0.0354"


def test_report_without_prices_shows_tokens_and_no_cost(
    run_cli: Run, unpriced_log: Path, tmp_path: Path
) -> None:
    parsed = report(run_cli, unpriced_log, tmp_path)
    models = by_first_cell(parsed.tables["Metrics per model"])
    assert models["primary"][-3:] == ["5,800", "1,200", "-"]
    assert parsed.cards["cost"] == "-"


def test_report_without_usage_is_unchanged(run_cli: Run, plain_log: Path, tmp_path: Path) -> None:
    parsed = report(run_cli, plain_log, tmp_path)
    assert parsed.tables["Metrics per model"][0] == list(MODEL_HEADERS)
    assert "calls" in parsed.cards
    assert not {"input tokens", "output tokens", "cost"} & parsed.cards.keys()
