"""What each error kind leads to (issue 14, items 2-3): the default table and ``error_actions``.

A silence (``timeout``) fails over at once; ``content_filter`` fails fast with the provider's
own error, never routed to a model with a weaker filter; each action is configurable.
"""

from __future__ import annotations

import pytest

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    HealthState,
    ModelError,
    replay,
)
from devs.risks.multi_model_failover.adapters.config import parse_config
from devs.risks.multi_model_failover.core.errors import ConfigError

from .fakes import FakeModelClient, always, engine, failing, script

pytestmark = pytest.mark.anyio


def _pair(primary: FakeModelClient) -> tuple[FakeModelClient, FakeModelClient]:
    return primary, FakeModelClient(always("secondary answer"), model_id="secondary")


async def test_a_content_filter_refusal_fails_fast_with_the_providers_reason() -> None:
    refusal = ModelError("HTTP 400 content_filter: flagged", kind="content_filter", status=400)
    refusal.code = "content_filter"
    primary = FakeModelClient(script(refusal), model_id="primary")
    primary_, secondary = _pair(primary)
    async with engine([primary_, secondary], {"max_attempts": 3}) as fo:
        with pytest.raises(ModelError) as caught:
            await fo.call("hi")
        assert fo.states["primary"] is HealthState.HEALTHY  # a refusal is not an outage
    assert caught.value is refusal  # the client's own error, as it raised it
    assert (caught.value.kind, caught.value.status, caught.value.code) == (
        ErrorKind.CONTENT_FILTER,
        400,
        "content_filter",
    )
    assert caught.value.model_id == "primary"
    assert secondary.calls == []
    assert len(primary.calls) == 1
    failed = [e for e in fo.event_store.read() if e.type == "call_failed"]
    assert [(e.reason, e.error_kind) for e in failed] == [("fail_fast", "content_filter")]  # type: ignore[union-attr]
    assert replay(fo.event_store).metrics == fo.metrics()


async def test_failing_over_on_content_filter_is_an_opt_in() -> None:
    primary = FakeModelClient(failing("content_filter", "flagged"), model_id="primary")
    clients = _pair(primary)
    retry = {"error_actions": {"content_filter": "failover"}}
    async with engine(clients, retry) as fo:
        assert await fo.call("hi") == "secondary answer"
    failovers = [e for e in fo.event_store.read() if e.type == "failover"]
    assert [e.reason for e in failovers] == ["content_filter"]  # type: ignore[union-attr]


async def test_retrying_a_silence_is_an_opt_in() -> None:
    silence = ModelError("no answer within 30s", kind="timeout")
    primary = FakeModelClient(script(silence, "primary answer"), model_id="primary")
    async with engine(_pair(primary), {"error_actions": {"timeout": "retry"}}) as fo:
        assert await fo.call("hi") == "primary answer"
    assert len(primary.calls) == 2


@pytest.mark.parametrize(
    ("kind", "action", "attempts", "answer"),
    [
        ("server", "fail", 1, None),
        ("server", "failover", 1, "secondary answer"),
        ("rate_limited", "failover", 1, "secondary answer"),
        ("context_length", "retry", 3, "secondary answer"),
        ("bad_request", "failover", 1, "secondary answer"),
        ("auth", "fail", 1, None),
    ],
)
async def test_each_kind_does_what_error_actions_say(
    kind: str, action: str, attempts: int, answer: str | None
) -> None:
    primary = FakeModelClient(failing(kind, "boom"), model_id="primary")
    async with engine(
        _pair(primary), {"max_attempts": 3, "base_delay": 0.01, "error_actions": {kind: action}}
    ) as fo:
        if answer is None:
            with pytest.raises(ModelError) as caught:
                await fo.call("hi")
            assert not isinstance(caught.value, AllModelsFailedError)
            assert caught.value.kind == kind
        else:
            assert await fo.call("hi") == answer
    assert len(primary.calls) == attempts


async def test_the_engine_started_event_records_the_error_actions() -> None:
    retry = {"error_actions": {"content_filter": "failover"}}
    async with engine([FakeModelClient()], retry) as fo:
        started = next(e for e in fo.event_store.read() if e.type == "engine_started")
    assert started.retry_policy["error_actions"] == {"content_filter": "failover"}  # type: ignore[union-attr]
    assert started.retry_policy["attempt_timeout"] == 30  # type: ignore[union-attr]


def test_error_actions_in_the_configuration_are_checked_by_name() -> None:
    document = {
        "multi_model_failover": {
            "clients": [{"id": "a", "kind": "callable", "target": "builtins:str"}],
            "retry_policy": {"error_actions": {"content_filter": "failover"}},
        }
    }
    config = parse_config(document, source="test")
    assert config.retry_policy.error_actions == {"content_filter": "failover"}
    document["multi_model_failover"]["retry_policy"] = {"error_actions": {"timeout": "maybe"}}  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"error_actions.*timeout|timeout.*error_actions"):
        parse_config(document, source="test")
    document["multi_model_failover"]["retry_policy"] = {"error_actions": {"deadlin": "fail"}}  # type: ignore[index]
    with pytest.raises(ConfigError, match="deadlin"):
        parse_config(document, source="test")
