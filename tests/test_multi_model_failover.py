"""The seed's four tests, exactly as the original specification names them.

They use ``unittest.mock`` fakes as the seed describes. Where the seed says "mock time.sleep",
the engine gets a mocked async ``sleep`` injected: it is async and must never block the loop.
With MULTI_MODEL_FAILOVER_TEST_LOG set (``just verify``) their events go to that SQLite file.
"""

from __future__ import annotations

import random
from unittest import mock
from unittest.mock import AsyncMock, Mock

import pytest

from devs.risks.multi_model_failover import (
    HealthState,
    ModelError,
    MultiModelFailover,
    replay,
)
from devs.risks.multi_model_failover.core.events import AttemptStarted, Failover

pytestmark = pytest.mark.anyio


def make_client(model_id: str, *, call: object = None, healthy: bool = True) -> Mock:
    """A mock ModelClient with async call() and health_check()."""
    client = Mock(spec=["call", "health_check", "model_id"])
    client.model_id = model_id
    client.call = (
        AsyncMock(side_effect=call)
        if isinstance(call, BaseException | list)
        else (AsyncMock(return_value=call))
    )
    client.health_check = AsyncMock(return_value=healthy)
    return client


async def test_primary_failure_triggers_failover(event_log: str | None) -> None:
    primary = make_client("primary", call=ModelError("primary is down"))
    secondary = make_client("secondary", call="secondary answer")
    manager = Mock()
    manager.attach_mock(primary.call, "primary_call")
    manager.attach_mock(secondary.call, "secondary_call")

    fo = MultiModelFailover([primary, secondary], event_store=event_log)
    answer = await fo.call("hello")
    await fo.aclose()

    assert answer == "secondary answer"
    called = [name for name, _, _ in manager.mock_calls]
    assert called.index("primary_call") < called.index("secondary_call")
    assert primary.call.await_count == 2  # default max_attempts before failing over
    secondary.call.assert_awaited_once_with("hello")
    attempts = [e.model_id for e in fo.event_store.read() if isinstance(e, AttemptStarted)]
    assert attempts[-3:] == ["primary", "primary", "secondary"]


async def test_retry_and_backoff_behavior(event_log: str | None) -> None:
    failures = 3
    primary = make_client(
        "primary", call=[ModelError("overloaded", kind="server")] * failures + ["primary answer"]
    )
    secondary = make_client("secondary", call="secondary answer")
    sleep = AsyncMock()
    policy = {"max_attempts": failures + 1, "base_delay": 0.5, "multiplier": 2.0, "jitter": "none"}

    fo = MultiModelFailover([primary, secondary], policy, sleep=sleep, event_store=event_log)
    answer = await fo.call("hello")
    await fo.aclose()

    assert answer == "primary answer"
    assert primary.call.await_count == failures + 1
    secondary.call.assert_not_awaited()
    assert sleep.await_args_list == [mock.call(0.5), mock.call(1.0), mock.call(2.0)]
    assert fo.metrics().retries == failures
    assert fo.metrics().backoff_seconds == 3.5

    # With jitter, every wait stays under its exponential ceiling.
    jittered = AsyncMock()
    primary = make_client("primary", call=[ModelError("overloaded")] * 3 + ["ok"])
    fo = MultiModelFailover(
        [primary],
        {"max_attempts": 4, "base_delay": 0.5, "jitter": "full"},
        sleep=jittered,
        rng=random.Random(7),
    )
    assert await fo.call("hello") == "ok"
    await fo.aclose()
    delays = [c.args[0] for c in jittered.await_args_list]
    assert len(delays) == 3
    assert all(0 <= d <= 0.5 * 2**n for n, d in enumerate(delays))


async def test_health_check_marks_unhealthy(event_log: str | None) -> None:
    primary = make_client("primary", call="primary answer", healthy=False)
    secondary = make_client("secondary", call="secondary answer")
    fo = MultiModelFailover([primary, secondary], event_store=event_log)

    states = await fo.check_health()
    assert states["primary"] is HealthState.UNHEALTHY
    assert fo.rotation == ["secondary"]
    assert await fo.call("hello") == "secondary answer"
    primary.call.assert_not_awaited()

    primary.health_check.return_value = True
    states = await fo.check_health()
    await fo.aclose()
    assert states["primary"] is HealthState.HEALTHY
    assert fo.rotation == ["primary", "secondary"]
    assert await_answer(primary) == 0
    assert replay(fo.event_store).states["primary"].state is HealthState.HEALTHY


def await_answer(client: Mock) -> int:
    return int(client.call.await_count)


async def test_failover_metrics_and_logging(
    event_log: str | None, log_records: list[dict[str, object]]
) -> None:
    primary = make_client("primary", call=ModelError("primary is down", kind="server"))
    secondary = make_client("secondary", call="secondary answer")
    fo = MultiModelFailover([primary, secondary], {"max_attempts": 1}, event_store=event_log)
    before = fo.metrics().failovers

    assert await fo.call("hello") == "secondary answer"
    await fo.aclose()

    assert fo.metrics().failovers == before + 1
    assert fo.metrics().by_model["secondary"].successes >= 1
    failovers = [e for e in fo.event_store.read() if isinstance(e, Failover)]
    assert (failovers[-1].from_model, failovers[-1].to_model) == ("primary", "secondary")
    warnings = [r for r in log_records if r["level"].name == "WARNING"]  # type: ignore[attr-defined]
    assert len(warnings) == 1
    assert "primary" in str(warnings[0]["message"])
    assert "secondary" in str(warnings[0]["message"])
    extra = warnings[0]["extra"]
    assert extra["from_model"] == "primary"  # type: ignore[index]
    assert extra["to_model"] == "secondary"  # type: ignore[index]
