"""Configuration loading: env var JSON beats the YAML file; every error names key and source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devs.risks.multi_model_failover import (
    ConfigError,
    HealthPolicy,
    MultiModelFailover,
    Price,
    RetryPolicy,
    load_config,
)
from devs.risks.multi_model_failover.adapters.config import ENV_VAR, resolve_api_key

pytestmark = pytest.mark.anyio

TARGET = "tests.test_config:echo"
LOCAL = {"id": "a", "kind": "callable", "target": TARGET}


def echo(prompt: str) -> str:
    """A plain function used as a `callable` client."""
    return f"echo: {prompt}"


def document(**section: object) -> dict[str, object]:
    base: dict[str, object] = {"clients": [{"id": "local", "kind": "callable", "target": TARGET}]}
    base.update(section)
    return {"multi_model_failover": base}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "risks.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_example_config_is_valid() -> None:
    config = load_config(Path("config/risks.yaml"), env={})
    assert [c.id for c in config.clients] == ["primary", "fallback"]
    assert config.retry_policy == RetryPolicy(jitter="full")
    assert config.health_policy == HealthPolicy()
    assert config.durability == "process"


def test_env_var_json_wins_over_the_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        f"multi_model_failover: {{clients: [{{id: file, kind: callable, target: '{TARGET}'}}]}}",
    )
    env = {ENV_VAR: json.dumps(document(health_check_interval=5))}
    config = load_config(path, env=env)
    assert [c.id for c in config.clients] == ["local"]
    assert config.health_check_interval == 5
    assert [c.id for c in load_config(path, env={}).clients] == ["file"]


def test_defaults_fill_every_optional_key() -> None:
    config = load_config(env={ENV_VAR: json.dumps(document())})
    assert config.retry_policy == RetryPolicy()
    assert config.health_check_interval == 30
    assert config.event_log is None
    assert config.clients[0].price is None
    assert config.prices == {}


def test_a_price_in_the_yaml_file_reaches_the_engine(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "multi_model_failover:\n  clients:\n"
        f"    - {{id: a, kind: callable, target: '{TARGET}', price: {{input: 3, output: 15}}}}\n",
    )
    assert load_config(path, env={}).prices == {"a": Price(input=3.0, output=15.0)}
    fo = MultiModelFailover.from_config(path, env={})
    assert fo.engine.prices == {"a": Price(input=3.0, output=15.0)}
    fo.event_store.close()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"retry_policy": {"max_atempts": 3}}, "max_atempts"),
        ({"retry_policy": {"base_delay": -1}}, "base_delay"),
        ({"retry_policy": {"jitter": "lots"}}, "jitter"),
        ({"health_policy": {"probe_timeout": 0}}, "probe_timeout"),
        ({"health_check_interval": "soon"}, "health_check_interval"),
        ({"durability": "forever"}, "durability"),
        ({"clients": []}, "clients"),
        ({"surprise": 1}, "surprise"),
        ({"clients": [{"id": "a", "kind": "telepathy"}]}, "clients[0].kind"),
        ({"clients": [{"id": "a", "kind": "openai"}]}, "model is required"),
        ({"clients": [{"kind": "callable", "target": TARGET}]}, "id"),
        (
            {"clients": [{"id": "a", "kind": "callable", "target": TARGET}] * 2},
            "duplicate client id(s): a",
        ),
        (
            {"clients": [{**LOCAL, "price": {"input": 1}}]},
            "missing required field `output` - at `multi_model_failover.clients[0].price`",
        ),
        (
            {"clients": [{**LOCAL, "price": {"input": -0.5, "output": 1}}]},
            "input must be a finite number >= 0",
        ),
    ],
)
def test_bad_documents_name_the_key_and_the_source(
    section: dict[str, object], expected: str
) -> None:
    env = {ENV_VAR: json.dumps(document(**section))}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert expected in str(caught.value)
    assert f"environment variable {ENV_VAR}" in str(caught.value)


def test_a_literal_api_key_is_refused_with_an_explanation() -> None:
    entry = {"id": "a", "kind": "openai", "model": "m", "api_key": "sk-live-123456789012345678"}
    with pytest.raises(ConfigError, match="literal keys are refused") as caught:
        load_config(env={ENV_VAR: json.dumps(document(clients=[entry]))})
    assert "sk-live" not in str(caught.value)


def test_api_key_env_must_be_a_variable_name() -> None:
    entry = {"id": "a", "kind": "openai", "model": "m", "api_key_env": "sk-abc def"}
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        load_config(env={ENV_VAR: json.dumps(document(clients=[entry]))})


def test_broken_json_and_yaml_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{ENV_VAR}: not valid JSON"):
        load_config(env={ENV_VAR: "{not json"})
    path = write_yaml(tmp_path, "multi_model_failover: [unclosed")
    with pytest.raises(ConfigError, match=r"risks\.yaml: not valid YAML"):
        load_config(path, env={})
    path = write_yaml(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path, env={})


def test_missing_file_says_what_was_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"{ENV_VAR} is not set and .*nope.yaml does not exist"):
        load_config(missing, env={})


def test_missing_key_variable_names_variable_and_client() -> None:
    entry = {"id": "primary", "kind": "openai", "model": "m", "api_key_env": "NOPE_KEY"}
    config = load_config(env={ENV_VAR: json.dumps(document(clients=[entry]))})
    with pytest.raises(ConfigError, match="client 'primary': environment variable NOPE_KEY"):
        resolve_api_key(config.clients[0], env={})
    assert resolve_api_key(config.clients[0], env={"NOPE_KEY": "value"}) == "value"


def test_repr_of_client_config_hides_header_values() -> None:
    entry = {
        "id": "a",
        "kind": "callable",
        "target": TARGET,
        "headers": {"Authorization": "Bearer abcdefghijklmnop"},
    }
    config = load_config(env={ENV_VAR: json.dumps(document(clients=[entry]))})
    assert "abcdefghijklmnop" not in repr(config)
    assert "Authorization" in repr(config.clients[0])


async def test_from_config_builds_a_working_engine(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    env = {ENV_VAR: json.dumps(document(event_log=str(log), durability="power"))}
    fo = MultiModelFailover.from_config(env=env)
    assert fo.model_ids == ("local",)
    assert await fo.call("hi") == "echo: hi"
    await fo.aclose()
    assert log.exists()
    assert fo.event_store.durability == "power"  # type: ignore[attr-defined]


def test_from_config_reports_a_target_that_does_not_import() -> None:
    entry = {"id": "x", "kind": "callable", "target": "no_such_module_here:fn"}
    with pytest.raises(ConfigError, match="client 'x': cannot import target"):
        MultiModelFailover.from_config(env={ENV_VAR: json.dumps(document(clients=[entry]))})


def test_a_password_in_the_event_log_url_is_refused() -> None:
    url = "postgresql://failover:hunter2hunter2@db.internal:5432/failover"
    with pytest.raises(ConfigError, match="event_log_password_env") as caught:
        load_config(env={ENV_VAR: json.dumps(document(event_log=url))})
    assert "hunter2" not in str(caught.value)


def test_event_log_password_env_must_be_set_and_a_variable_name() -> None:
    key = "event_log_password_env"
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        load_config(env={ENV_VAR: json.dumps(document(**{key: "pa ss"}))})
    config = load_config(env={ENV_VAR: json.dumps(document(**{key: "FAILOVER_PG_PASSWORD"}))})
    unset = r"FAILOVER_PG_PASSWORD \(event_log_password_env\) is not set"
    with pytest.raises(ConfigError, match=unset):
        config.event_log_password({})
    assert config.event_log_password({"FAILOVER_PG_PASSWORD": "s3cret"}) == "s3cret"


def test_replica_settings_reach_the_engine(tmp_path: Path) -> None:
    log = tmp_path / "shared.sqlite3"
    env = {
        ENV_VAR: json.dumps(
            document(
                event_log=str(log),
                replica="eu-west-1a",
                follow_interval=0.25,
                health_policy={"scope": "replica"},
            )
        )
    }
    fo = MultiModelFailover.from_config(env=env)
    assert fo.follow_interval == 0.25
    assert fo.health_policy.scope == "replica"
    assert fo.event_store.writer == "eu-west-1a"
    fo.event_store.close()


@pytest.mark.parametrize("value", [0, -1])
def test_follow_interval_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError, match="follow_interval must be > 0"):
        load_config(env={ENV_VAR: json.dumps(document(follow_interval=value))})


# -- hostile values (issue: one clean line naming the key and the source) ---------------------


@pytest.mark.parametrize("key", ["health_check_interval", "follow_interval"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_an_infinite_interval_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, key: str, value: str
) -> None:
    path = write_yaml(
        tmp_path,
        f"multi_model_failover:\n  clients: [{{id: a, kind: callable, target: '{TARGET}'}}]\n"
        f"  {key}: {value}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert key in message
    assert str(path) in message


def test_an_infinite_client_timeout_is_refused(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "multi_model_failover:\n"
        f"  clients: [{{id: a, kind: callable, target: '{TARGET}', timeout: .inf}}]\n",
    )
    with pytest.raises(ConfigError, match="timeout must be > 0 seconds and finite"):
        load_config(path, env={})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?password=hunter2",
        "postgresql://u@h/db?sslmode=require&password=hunter2",
        "postgres://u@h/db?PASSWORD=hunter2",
    ],
)
def test_a_password_in_the_urls_query_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="event_log") as caught:
        load_config(env={ENV_VAR: json.dumps(document(event_log=url))})
    assert "hunter2" not in str(caught.value)


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_the_line(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "multi_model_failover:\n"
        f"  clients: [{{id: a, kind: callable, target: '{TARGET}'}}]\n"
        "  health_check_interval: 30\n"
        "  health_check_interval: 5\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "health_check_interval" in message
    assert "duplicate" in message
    assert str(path) in message
    assert "line 4" in message


def test_duplicate_keys_nested_in_a_client_are_refused(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "multi_model_failover:\n  clients:\n"
        f"    - {{id: a, kind: callable, target: '{TARGET}', id: b}}\n",
    )
    with pytest.raises(ConfigError, match="duplicate key 'id'"):
        load_config(path, env={})


def test_a_percent_encoded_password_in_the_urls_query_is_refused() -> None:
    url = "postgresql://u@h/db?pass%77ord=hunter2secret"
    with pytest.raises(ConfigError, match="event_log") as caught:
        load_config(env={ENV_VAR: json.dumps(document(event_log=url))})
    assert "hunter2secret" not in str(caught.value)


def test_a_number_out_of_range_names_its_key() -> None:
    text = json.dumps(document(health_check_interval=1)).replace(
        '"health_check_interval": 1', '"health_check_interval": 1e999'
    )
    with pytest.raises(ConfigError, match="health_check_interval"):
        load_config(env={ENV_VAR: text})


def test_duplicate_json_keys_are_refused() -> None:
    text = json.dumps(document(health_check_interval=5))[:-2] + ', "health_check_interval": 6}}'
    with pytest.raises(ConfigError, match="duplicate key 'health_check_interval'"):
        load_config(env={ENV_VAR: text})


def test_a_duplicate_yaml_key_is_one_line(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "multi_model_failover:\n"
        f"  clients: [{{id: a, kind: callable, target: '{TARGET}'}}]\n"
        "  durability: process\n"
        "  durability: power\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "\n" not in str(caught.value)
    assert "duplicate key 'durability'" in str(caught.value)
