"""From a YAML file to answers: three real servers, an outage, a failover, a recovery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from fake_provider import FakeProvider, Reply, openai_error
from helpers import (
    ANTHROPIC,
    ANTHROPIC_KEY,
    OPENAI,
    OPENAI_KEY,
    FakeSleep,
    events_of,
    log_text,
)

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ConfigError,
    ErrorKind,
    HealthState,
    ModelResponse,
    MultiModelFailover,
    replay,
)

pytestmark = pytest.mark.anyio

OPENROUTER_KEY = "sk-or-v1-" + "0f3a9c7e5b1d" * 5 + "a1b2"
KEYS = {
    "OPENAI_API_KEY": OPENAI_KEY,
    "ROUTER_KEY": OPENROUTER_KEY,
    "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
}


def write_config(tmp_path: Path, a: FakeProvider, b: FakeProvider, c: FakeProvider) -> Path:
    path = tmp_path / "risks.yaml"
    path.write_text(
        f"""
multi_model_failover:
  clients:
    - id: primary
      kind: openai
      model: gpt-4o-mini
      base_url: {a.url}/v1
      api_key_env: OPENAI_API_KEY
      timeout: 2
    - id: router
      kind: openai
      model: meta-llama/llama-3.1-70b-instruct
      base_url: {b.url}/v1
      api_key_env: ROUTER_KEY
      headers: {{X-Title: failover-tests}}
      params: {{temperature: 0}}
      probe: models
    - id: claude
      kind: anthropic
      model: claude-haiku-4-5
      base_url: {c.url}
      api_key_env: ANTHROPIC_API_KEY
      params: {{max_tokens: 256}}
  retry_policy: {{max_attempts: 2, base_delay: 0.5, jitter: none, call_budget: 30}}
  health_check_interval: 0.05
  event_log: {tmp_path / "events.sqlite3"}
""",
        encoding="utf-8",
    )
    return path


def start(make_provider: Callable[[], FakeProvider]) -> tuple[FakeProvider, ...]:
    a, b, c = make_provider(), make_provider(), make_provider()
    a.script(
        OPENAI.chat, then=Reply(503, openai_error("upstream overloaded", type_="server_error"))
    )
    b.script(
        OPENAI.chat,
        Reply(body=OPENAI.ok("from router")),
        # A provider that echoes the key back: the scrubber must catch it.
        then=Reply(
            429,
            openai_error(f"Rate limit for key {OPENROUTER_KEY} reached"),
            headers={"retry-after": "3600"},
        ),
    )
    b.script(OPENAI.models, then=Reply(body={"data": []}))  # router probes with GET /models
    c.script(ANTHROPIC.chat, then=Reply(body=ANTHROPIC.ok("from claude")))
    return a, b, c


async def test_from_config_fails_over_and_recovers_through_the_health_loop(
    tmp_path: Path,
    make_provider: Callable[[], FakeProvider],
    log_records: list[dict[str, object]],
) -> None:
    a, b, c = start(make_provider)
    path = write_config(tmp_path, a, b, c)
    sleep = FakeSleep()
    fo = MultiModelFailover.from_config(path, env=KEYS, sleep=sleep)
    texts: list[str] = []
    try:
        assert fo.model_ids == ("primary", "router", "claude")
        first = await fo.call("Summarise the incident")
        assert isinstance(first, ModelResponse)
        assert (first.text, first.model) == ("from router", "gpt-test-2024")
        assert fo.states["primary"] is HealthState.DEGRADED

        assert (await fo.check_health())["primary"] is HealthState.UNHEALTHY
        assert fo.rotation == ["router", "claude"]

        second = await fo.call(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Again"}]
        )
        assert second.text == "from claude"

        a.script(OPENAI.chat, then=Reply(body=OPENAI.ok("from primary")))
        async with fo:  # the background health loop probes at once, then every 0.05 s
            # No hook tells when a probe round ended: poll the live state, bounded.
            for _ in range(1000):
                if fo.states.get("primary") is HealthState.HEALTHY:
                    break
                await anyio.sleep(0.01)
            third = await fo.call("And now?")
        assert third.text == "from primary"
        texts = [log_text(fo)]
    finally:
        await fo.aclose()

    # Built from config: fo owns them.
    assert all(w.client.closed for w in fo.engine.registry.by_id.values())
    failovers = [(f.from_model, f.to_model, f.reason) for f in events_of(fo, "failover")]
    assert failovers == [
        ("primary", "router", ErrorKind.SERVER),
        ("router", "claude", ErrorKind.RATE_LIMITED),
    ]
    primary = [s.to_state for s in events_of(fo, "state_changed") if s.model_id == "primary"]
    assert primary == [HealthState.DEGRADED, HealthState.UNHEALTHY, HealthState.HEALTHY]
    # One backoff on primary; the 3600 s hint was not waited out. (The health loop's waits go
    # through the injected sleep too, after it.)
    assert [e.delay for e in events_of(fo, "backoff")] == [0.5]
    assert sleep.delays[0] == 0.5
    assert 3600 not in sleep.delays

    # Health probes (one-token "ping" requests) reached claude's chat path too.
    (to_claude,) = [r.json() for r in c.sent_to(ANTHROPIC.chat) if "system" in r.json()]
    assert (to_claude["system"], to_claude["max_tokens"]) == ("Be brief.", 256)
    to_router = b.sent_to(OPENAI.chat)[0]
    assert to_router.headers["x-title"] == "failover-tests"
    assert to_router.headers["authorization"] == f"Bearer {OPENROUTER_KEY}"

    stored = replay(tmp_path / "events.sqlite3")
    assert stored.metrics.failovers == 2
    assert stored.states["primary"].state is HealthState.HEALTHY

    texts.append(log_text(fo))
    texts += [f"{r['message']} {r['extra']}" for r in log_records]
    texts += [repr(w.client) for w in fo.engine.registry.by_id.values()]
    everything = "\n".join(texts)
    assert "router" in everything
    for key in KEYS.values():
        assert key not in everything
        assert key[-16:] not in everything


async def test_every_client_failing_names_each_attempt_without_a_key(
    tmp_path: Path, make_provider: Callable[[], FakeProvider]
) -> None:
    a, b, c = start(make_provider)
    b.script(
        OPENAI.chat, then=Reply(401, openai_error(f"Incorrect API key provided: {OPENROUTER_KEY}"))
    )
    c.script(
        ANTHROPIC.chat,
        then=Reply(
            401,
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": f"invalid x-api-key {ANTHROPIC_KEY}",
                },
            },
        ),
    )
    fo = MultiModelFailover.from_config(
        write_config(tmp_path, a, b, c), env=KEYS, sleep=FakeSleep()
    )
    try:
        await fo.call("warm-up")  # router answers once
        with pytest.raises(AllModelsFailedError) as caught:
            await fo.call("hi")
    finally:
        await fo.aclose()
    kinds = [(r.model_id, r.error_kind) for r in caught.value.attempts]
    assert kinds == [
        ("primary", ErrorKind.SERVER),
        ("primary", ErrorKind.SERVER),
        ("router", ErrorKind.AUTH),
        ("claude", ErrorKind.AUTH),
    ]
    shown = " ".join(
        [str(caught.value), repr(caught.value), *(r.message for r in caught.value.attempts)]
    )
    shown += log_text(fo)
    for key in KEYS.values():
        assert key not in shown


async def test_a_missing_key_variable_fails_at_start_up(
    tmp_path: Path, make_provider: Callable[[], FakeProvider]
) -> None:
    a, b, c = start(make_provider)
    env = {k: v for k, v in KEYS.items() if k != "ANTHROPIC_API_KEY"}
    with pytest.raises(ConfigError) as caught:
        MultiModelFailover.from_config(write_config(tmp_path, a, b, c), env=env)
    assert "ANTHROPIC_API_KEY" in str(caught.value)
    assert "'claude'" in str(caught.value)
    assert not (tmp_path / "events.sqlite3").exists()
    assert a.requests == b.requests == c.requests == []
