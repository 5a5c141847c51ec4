"""RetryPolicy and HealthPolicy: DESIGN.md's defaults, the dict form, and loud validation."""

from __future__ import annotations

import math

import pytest

from devs.risks.multi_model_failover import ErrorKind, HealthPolicy, MultiModelFailover, RetryPolicy
from devs.risks.multi_model_failover.core.policies import DEFAULT_ERROR_ACTIONS

from .fakes import FakeModelClient

pytestmark = pytest.mark.anyio


def test_retry_policy_defaults_match_the_design() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 2
    assert policy.base_delay == 0.5
    assert policy.multiplier == 2.0
    assert policy.max_delay == 8.0
    assert policy.jitter == "full"
    assert policy.call_budget == 60
    assert policy.max_total_attempts is None
    # Issue 14: a silence must not eat the whole budget; 30 s fits an LLM answer.
    assert policy.attempt_timeout == 30
    assert policy.first_token_timeout == 30
    assert policy.idle_timeout == 30
    assert policy.retry_budget_ratio == 0.2
    assert policy.retry_budget_min_per_s == 10
    assert policy.error_actions == {}
    assert {kind: policy.action(kind) for kind in DEFAULT_ERROR_ACTIONS} == {
        "rate_limited": "retry",
        "server": "retry",
        "unknown": "retry",
        "timeout": "failover",
        "auth": "failover",
        "context_length": "failover",
        "content_filter": "fail",
        "bad_request": "fail",
    }


def test_health_policy_defaults_match_the_design() -> None:
    policy = HealthPolicy()
    assert policy.degraded_after == 1
    assert policy.unhealthy_after == 3
    assert policy.probe_timeout == 5
    assert policy.recovery_probe_delay == 1
    assert policy.trial_after == 1
    assert policy.trial_calls == 1


def test_error_actions_override_the_defaults_kind_by_kind() -> None:
    policy = RetryPolicy.coerce(
        {"error_actions": {"content_filter": "failover", "timeout": "retry"}}
    )
    assert policy.action(ErrorKind.CONTENT_FILTER) == "failover"
    assert policy.action(ErrorKind.TIMEOUT) == "retry"
    assert policy.action(ErrorKind.SERVER) == "retry"
    assert policy.action(ErrorKind.BAD_REQUEST) == "fail"


@pytest.mark.parametrize(
    ("actions", "named"),
    [
        ({"content_filtr": "fail"}, "content_filtr"),
        ({"deadline": "retry"}, "deadline"),
        ({"timeout": "again"}, "error_actions.timeout"),
        ("fail", "error_actions"),
    ],
)
def test_bad_error_actions_name_the_entry(actions: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RetryPolicy.coerce({"error_actions": actions})


def test_dict_form_uses_the_same_keys() -> None:
    keys = {
        "max_attempts": 4,
        "base_delay": 0.1,
        "multiplier": 3,
        "max_delay": 2.0,
        "jitter": "equal",
        "call_budget": 9,
        "max_total_attempts": 5,
        "attempt_timeout": 1.5,
        "first_token_timeout": 2.5,
        "idle_timeout": None,
        "retry_budget_ratio": 0.5,
        "retry_budget_min_per_s": 1,
        "error_actions": {"content_filter": "failover"},
    }
    assert RetryPolicy.coerce(keys) == RetryPolicy(**keys)  # type: ignore[arg-type]
    assert RetryPolicy.coerce(keys).to_dict() == keys
    health = {
        "degraded_after": 2,
        "unhealthy_after": 4,
        "probe_timeout": 0.5,
        "recovery_probe_delay": 0.25,
        "trial_after": 0,
        "trial_calls": 0,
    }
    assert HealthPolicy.coerce(health) == HealthPolicy(**health)  # type: ignore[arg-type]


def test_partial_dict_keeps_the_other_defaults() -> None:
    assert RetryPolicy.coerce({"max_attempts": 3}) == RetryPolicy(max_attempts=3)
    assert RetryPolicy.coerce(None) == RetryPolicy()
    assert HealthPolicy.coerce({}) == HealthPolicy()


async def test_constructor_accepts_policies_as_dicts() -> None:
    fo = MultiModelFailover(
        [FakeModelClient()],
        {"max_attempts": 5, "jitter": "none"},
        health_policy={"unhealthy_after": 7},
    )
    await fo.aclose()
    assert fo.retry_policy == RetryPolicy(max_attempts=5, jitter="none")
    assert fo.health_policy == HealthPolicy(unhealthy_after=7)


@pytest.mark.parametrize("policy", [RetryPolicy, HealthPolicy])
def test_unknown_key_raises_value_error_naming_it(
    policy: type[RetryPolicy] | type[HealthPolicy],
) -> None:
    with pytest.raises(ValueError, match="max_atempts"):
        policy.coerce({"max_atempts": 2})


def test_constructor_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(ValueError, match="base_dealy"):
        MultiModelFailover([FakeModelClient()], {"base_dealy": 1})
    with pytest.raises(ValueError, match="degrade_after"):
        MultiModelFailover([FakeModelClient()], health_policy={"degrade_after": 1})


INVALID_RETRY = [
    ("max_attempts", 0),
    ("max_attempts", -1),
    ("max_attempts", 1.5),
    ("max_attempts", True),
    ("max_attempts", "2"),
    ("base_delay", -0.1),
    ("base_delay", math.nan),
    ("base_delay", math.inf),
    ("base_delay", False),
    ("multiplier", 0.5),
    ("multiplier", math.nan),
    ("max_delay", -1),
    ("max_delay", math.inf),
    ("jitter", "x"),
    ("jitter", None),
    ("call_budget", 0),
    ("call_budget", -5),
    ("call_budget", math.inf),
    ("call_budget", math.nan),
    ("call_budget", True),
    ("max_total_attempts", 0),
    ("max_total_attempts", 2.5),
    ("attempt_timeout", 0),
    ("attempt_timeout", -1),
    ("attempt_timeout", math.nan),
    ("retry_budget_ratio", -0.1),
    ("retry_budget_ratio", math.inf),
    ("retry_budget_min_per_s", -1),
    ("retry_budget_min_per_s", True),
]


@pytest.mark.parametrize(("key", "value"), INVALID_RETRY)
def test_invalid_retry_value_raises_value_error_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        RetryPolicy.coerce({key: value})
    with pytest.raises(ValueError, match=key):
        RetryPolicy(**{key: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=key):
        MultiModelFailover([FakeModelClient()], {key: value})


INVALID_HEALTH = [
    ("degraded_after", 0),
    ("degraded_after", True),
    ("degraded_after", 1.5),
    ("unhealthy_after", 0),
    ("unhealthy_after", math.nan),
    ("probe_timeout", 0),
    ("probe_timeout", -1),
    ("probe_timeout", math.inf),
    ("probe_timeout", math.nan),
    ("probe_timeout", False),
]


@pytest.mark.parametrize(("key", "value"), INVALID_HEALTH)
def test_invalid_health_value_raises_value_error_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        HealthPolicy.coerce({key: value})
    with pytest.raises(ValueError, match=key):
        MultiModelFailover([FakeModelClient()], health_policy={key: value})


def test_unhealthy_threshold_below_degraded_is_refused() -> None:
    with pytest.raises(ValueError, match="unhealthy_after"):
        HealthPolicy(degraded_after=3, unhealthy_after=2)


def test_a_policy_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        RetryPolicy.coerce([("max_attempts", 2)])  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf, True])
def test_invalid_health_check_interval_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="health_check_interval"):
        MultiModelFailover([FakeModelClient()], health_check_interval=interval)
