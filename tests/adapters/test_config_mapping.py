"""Configuration as data: ``from_config`` takes the document as a mapping, and a client's
``price`` turns the usage in the log into a cost."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from devs.risks.multi_model_failover import (
    ConfigError,
    ModelResponse,
    MultiModelFailover,
    Price,
    Usage,
    load_config,
    replay,
)
from devs.risks.multi_model_failover.adapters.config import ENV_VAR

pytestmark = pytest.mark.anyio

MAPPING = "the given mapping"


def answer(prompt: str) -> ModelResponse:
    """A ``callable`` client's target: 1,000 input and 200 output tokens per answer."""
    return ModelResponse(
        text=f"answer: {prompt}",
        model="local-model",
        usage=Usage(input_tokens=1_000, output_tokens=200),
    )


def other(prompt: str) -> str:
    """A second target, reporting no usage."""
    return f"other: {prompt}"


def client(client_id: str = "local", target: str = "answer", **entry: Any) -> dict[str, Any]:
    return {"id": client_id, "kind": "callable", "target": f"{__name__}:{target}", **entry}


def document(*clients: dict[str, Any], **section: Any) -> dict[str, Any]:
    return {"multi_model_failover": {"clients": list(clients) or [client()], **section}}


# -- a mapping as the source -------------------------------------------------------------------


async def test_from_config_builds_an_engine_from_a_mapping(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover.from_config(
        document(retry_policy={"max_attempts": 1}, event_log=str(log)), env={}
    )
    try:
        assert fo.model_ids == ("local",)
        assert fo.retry_policy.max_attempts == 1
        response = await fo.call("hi")
        assert response.text == "answer: hi"
    finally:
        await fo.aclose()
    assert replay(log).metrics.calls_succeeded == 1


async def test_any_mapping_will_do_as_the_yaml_would_give_it() -> None:
    frozen = types.MappingProxyType(
        {"multi_model_failover": types.MappingProxyType({"clients": (client(),)})}
    )
    fo = MultiModelFailover.from_config(frozen, env={})
    try:
        assert (await fo.call("hi")).text == "answer: hi"
    finally:
        await fo.aclose()


def test_the_variable_still_wins_over_a_mapping() -> None:
    env = {ENV_VAR: json.dumps(document(client("from-env", "other")))}
    config = load_config(document(), env=env)
    assert [c.id for c in config.clients] == ["from-env"]
    assert [c.id for c in load_config(document(), env={ENV_VAR: "  "}).clients] == ["local"]


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (document(retry_policy={"max_atempts": 3}), "max_atempts"),
        (document(client(timeout="soon")), "multi_model_failover.clients[0].timeout"),
        (document(client(), client("local", "other")), "duplicate client id(s): local"),
        (document(client(kind="telepathy")), "multi_model_failover.clients[0].kind"),
        ({"multi_model_failover": {}}, "clients"),
        ({"clients": []}, "unknown field `clients`"),
    ],
)
def test_errors_in_a_mapping_name_the_key_path_and_the_source(
    doc: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        MultiModelFailover.from_config(doc, env={})
    message = str(caught.value)
    assert path in message
    assert f"invalid configuration in {MAPPING}" in message


def test_a_literal_key_in_a_mapping_is_refused_as_in_a_file() -> None:
    entry = {"id": "a", "kind": "openai", "model": "m", "api_key": "sk-live-123456789012345678"}
    with pytest.raises(ConfigError, match="literal keys are refused") as caught:
        load_config(document(entry), env={})
    assert "sk-live" not in str(caught.value)
    assert MAPPING in str(caught.value)


def test_a_source_that_is_neither_a_path_nor_a_mapping_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"path or a mapping.*got list"):
        load_config([document()], env={})  # type: ignore[arg-type]


def test_a_path_still_works_as_before(tmp_path: Path) -> None:
    path = tmp_path / "risks.yaml"
    entry = f"{{id: file, kind: callable, target: '{__name__}:other'}}"
    path.write_text(f"multi_model_failover:\n  clients: [{entry}]\n", encoding="utf-8")
    assert [c.id for c in load_config(path, env={}).clients] == ["file"]
    assert [c.id for c in load_config(str(path), env={}).clients] == ["file"]


# -- price ----------------------------------------------------------------------------------------


def test_a_price_per_client_is_read_into_the_engines_prices() -> None:
    config = load_config(
        document(client(price={"input": 3, "output": 15.0}), client("free", "other")), env={}
    )
    assert config.prices == {"local": Price(input=3.0, output=15.0)}
    assert config.clients[1].price is None


@pytest.mark.parametrize(
    ("price", "problem"),
    [
        ({"input": 3.0}, "output"),
        ({"output": 3.0}, "input"),
        ({"input": -1.0, "output": 1.0}, "input must be a finite number >= 0"),
        ({"input": 1.0, "output": float("inf")}, "output must be a finite number >= 0"),
        ({"input": "3", "output": 1.0}, "Expected `float`, got `str`"),
        ({"input": True, "output": 1.0}, "Expected `float`, got `bool`"),
        ({"input": 1.0, "output": 1.0, "currency": "EUR"}, "currency"),
        (3.0, "Expected `object | null`, got `float`"),
    ],
)
def test_a_bad_price_names_its_key_path(price: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(document(client(price=price)), env={})
    message = str(caught.value)
    assert problem in message
    assert "multi_model_failover.clients[0].price" in message
    assert MAPPING in message


async def test_configured_prices_give_a_cost_in_metrics_live_and_replayed(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    doc = document(
        client(price={"input": 3.0, "output": 15.0}),
        client("free", "other"),
        event_log=str(log),
    )
    fo = MultiModelFailover.from_config(doc, env={})
    try:
        await fo.call("one")
        await fo.call("two")
        await fo.set_maintenance("local", True)
        assert await fo.call("three") == "other: three"
        metrics = fo.metrics()
    finally:
        await fo.aclose()
    local = metrics.by_model["local"]
    assert (local.input_tokens, local.output_tokens) == (2_000, 400)
    assert local.cost == pytest.approx(2 * (1_000 * 3.0 + 200 * 15.0) / 1e6)
    assert metrics.by_model["free"].cost is None
    assert metrics.cost == pytest.approx(local.cost)
    assert replay(log).metrics == metrics


async def test_prices_given_to_from_config_replace_the_configured_ones() -> None:
    doc = document(client(price={"input": 3.0, "output": 15.0}))
    fo = MultiModelFailover.from_config(doc, env={}, prices={"local": Price(input=1, output=1)})
    try:
        await fo.call("hi")
        assert fo.metrics().cost == pytest.approx(1_200 / 1e6)
    finally:
        await fo.aclose()
