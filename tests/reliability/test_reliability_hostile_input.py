"""Hostile input: fuzzed configuration and event bytes, corrupt logs, odd prompts.

- Configuration loading (``parse_config``, ``load_config`` through the environment variable)
  lets only ``ConfigError`` escape, whatever the text or structure.
- The event decoder raises only msgspec's ``DecodeError``/``ValidationError``.
- A log with corrupt rows, truncated JSON, unknown event types or a wrong field type fails
  ``replay`` with a message naming the row's seq, or is skipped and counted with
  ``lenient=True``; a newer schema version is refused by name.
- 10 MB, empty and unicode prompts work and are never stored; a non-str prompt is a
  ``TypeError`` naming its type, and records nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import ScriptedClient, read_all

from devs.risks.multi_model_failover import (
    ConfigError,
    EventLogError,
    MultiModelFailover,
    SchemaVersionError,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.adapters.config import ENV_VAR, load_config, parse_config
from devs.risks.multi_model_failover.core.events import EVENT_TYPES, decode

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_ish = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

CLIENT_KEYS = ["id", "kind", "model", "base_url", "api_key_env", "timeout", "headers",
               "params", "target", "api_key"]  # fmt: skip
POLICY_KEYS = ["max_attempts", "base_delay", "multiplier", "max_delay", "jitter",
               "call_budget", "max_total_attempts", "attempt_timeout", "retry_budget_ratio",
               "retry_budget_min_per_s", "degraded_after", "unhealthy_after",
               "probe_timeout"]  # fmt: skip


def near(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings that mostly use the real key names, with values of any shape."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), json_ish, max_size=6)


documents = (
    st.fixed_dictionaries(
        {
            "multi_model_failover": st.fixed_dictionaries(
                {},
                optional={
                    "clients": st.lists(near(CLIENT_KEYS), max_size=3) | json_ish,
                    "retry_policy": near(POLICY_KEYS),
                    "health_policy": near(POLICY_KEYS),
                    "health_check_interval": scalars,
                    "event_log": scalars,
                    "durability": st.sampled_from(["buffered", "process", "power", "fast"])
                    | scalars,
                },
            )
        }
    )
    | json_ish
)


def only_config_error(load: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``load``; it may return or raise ``ConfigError``, never anything else."""
    try:
        load(*args, **kwargs)
    except ConfigError as exc:
        message = str(exc)
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped: {exc!r}")
    else:
        return
    assert message.startswith(("invalid configuration", "no configuration", "cannot read"))


@FUZZ
@given(st.text())
def test_any_config_text_yields_config_error_or_a_config(text: str) -> None:
    only_config_error(parse_config, text)


@FUZZ
@given(documents)
def test_any_config_structure_yields_config_error_or_a_config(document: Any) -> None:
    only_config_error(parse_config, document)
    try:
        # Real characters, not \u escapes: see the surrogate-pair test below.
        text = json.dumps(document, ensure_ascii=False)
    except ValueError:  # a float json cannot hold
        return
    only_config_error(load_config, env={ENV_VAR: text})
    only_config_error(parse_config, text)


@FUZZ
@given(st.binary() | st.text().map(str.encode))
def test_any_env_var_bytes_yield_config_error(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    only_config_error(load_config, "/nonexistent/risks.yaml", env={ENV_VAR: text})


@pytest.mark.parametrize(
    "text",
    ["[" * 5_000, "{" * 5_000, "a:\n" + "  - " * 5_000 + "x"],
    ids=["json lists", "json objects", "yaml lists"],
)
def test_deeply_nested_config_yields_config_error(text: str) -> None:
    only_config_error(parse_config, text)
    only_config_error(load_config, env={ENV_VAR: text})


def test_json_text_with_an_escaped_astral_character_yields_config_error() -> None:
    only_config_error(parse_config, '{"\\ud83d\\ude00": 1}')


def decodes_or_says_why(data: bytes | str) -> None:
    """``decode`` returns an event or raises one of msgspec's two errors, nothing else."""
    try:
        decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped decode: {exc!r}")


@FUZZ
@given(st.binary())
def test_decoding_any_bytes_fails_cleanly(data: bytes) -> None:
    decodes_or_says_why(data)


event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(EVENT_TYPES)) | st.text(max_size=12)},
    optional={
        "seq": scalars,
        "at": st.sampled_from(["2025-01-01T00:00:00Z", "yesterday", ""]) | scalars,
        "call_id": scalars,
        "model_id": scalars,
        "models": json_ish,
        "order": json_ish,
        "attempt": scalars,
        "latency": scalars,
        "error_kind": st.sampled_from(["server", "auth", "nope"]) | scalars,
        "from_state": st.sampled_from(["healthy", "maintenance", "gone"]) | scalars,
        "on": scalars,
    },
)


@FUZZ
@given(event_like)
def test_decoding_any_event_shaped_json_fails_cleanly(document: dict[str, Any]) -> None:
    try:
        data = json.dumps(document)
    except ValueError:
        return
    decodes_or_says_why(data)
    decodes_or_says_why(data[: len(data) // 2])  # truncated


# -- corrupt logs ----------------------------------------------------------------------------


def written_log(path: Path) -> int:
    """A log with a few successful calls; returns how many events it holds."""

    async def fill() -> None:
        fo = MultiModelFailover([ScriptedClient("a")], event_store=path)
        for _ in range(3):
            await fo.call("hi")
        await fo.aclose()

    anyio.run(fill)
    return len(read_all(path))


def corrupt(path: Path, seq: int, body: object) -> None:
    """Overwrite the stored body of one row, as a torn write or a foreign writer might."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body, seq))


CORRUPTIONS = {
    "truncated json": '{"seq":3,"type":"call_sta',
    "not json": "\x00\x01 garbage",
    "unknown type": '{"type":"alien_event","at":"2025-01-01T00:00:00Z"}',
    "wrong field type": '{"type":"call_succeeded","at":"2025-01-01T00:00:00Z","call_id":"c",'
    '"model_id":"a","attempts":"two","failovers":0,"latency":0.1}',
    "binary blob": b"\xff\xfe\x00junk",
    "empty": "",
}


@pytest.mark.parametrize("body", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_row_fails_replay_naming_its_seq(tmp_path: Path, body: object) -> None:
    log = tmp_path / "corrupt.sqlite3"
    written_log(log)
    corrupt(log, 3, body)

    with pytest.raises(EventLogError, match=r"seq=3\b"):
        replay(log, from_start=True)  # every row: the log's close snapshot is past row 3


def test_lenient_replay_skips_and_counts_every_corrupt_row(tmp_path: Path) -> None:
    log = tmp_path / "corrupt.sqlite3"
    total = written_log(log)
    bad = [2, 4, 5, 7, 8, 9]
    for seq, body in zip(bad, CORRUPTIONS.values(), strict=True):
        corrupt(log, seq, body)

    with SQLiteEventStore(log, create=False) as store:
        snapshot = replay(store, from_start=True, lenient=True)  # every row, not a snapshot
        assert store.skipped == len(bad)
    assert snapshot.events == total - len(bad)


def test_a_newer_schema_version_is_refused_by_name(tmp_path: Path) -> None:
    log = tmp_path / "future.sqlite3"
    written_log(log)
    with contextlib.closing(sqlite3.connect(log)) as conn, conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    before = log.read_bytes()

    with pytest.raises(SchemaVersionError, match="999"):
        replay(log)
    with pytest.raises(SchemaVersionError, match="999"):
        MultiModelFailover([ScriptedClient("a")], event_store=log)
    assert log.read_bytes() == before, "a newer log was written to"


# -- odd prompts ----------------------------------------------------------------------------

ODD_PROMPTS = {
    "empty": "",
    "emoji": "👩‍🚀🚀 " * 1000,
    "rtl": "\u202eمرحبا بالعالم\u202c שלום",  # noqa: RUF001 - right-to-left text on purpose
    "nul": "before\x00after",
    "combining": "e\u0301" * 500,
    "astral": "\U0001f600\U00010000\U0010ffff",
    "ten megabytes": "x" * 10_000_000,
}


@pytest.mark.anyio
@pytest.mark.parametrize("fingerprint", [False, True], ids=["plain", "fingerprinted"])
@pytest.mark.parametrize("prompt", ODD_PROMPTS.values(), ids=ODD_PROMPTS.keys())
async def test_odd_prompts_reach_the_model_unchanged_and_are_not_stored(
    tmp_path: Path, prompt: str, fingerprint: bool
) -> None:
    received: list[str] = []

    async def echo(p: str) -> str:
        received.append(p)
        await anyio.lowlevel.checkpoint()
        return "ok"

    log = tmp_path / "prompts.sqlite3"
    fo = MultiModelFailover(
        [ScriptedClient("a", call=echo)], event_store=log, fingerprint_prompts=fingerprint
    )
    assert await fo.call(prompt) == "ok"
    await fo.aclose()

    assert received == [prompt]
    assert received[0] is prompt
    started = [e for e in read_all(log) if e.type == "call_started"]
    if fingerprint:
        assert started[0].prompt_chars == len(prompt)  # type: ignore[union-attr]
        assert len(started[0].prompt_hash or "") == 32  # type: ignore[union-attr]
    else:
        assert started[0].prompt_hash is None  # type: ignore[union-attr]
    assert log.stat().st_size < 1_000_000, "the prompt reached the log file"


@pytest.mark.anyio
async def test_a_lone_surrogate_prompt_is_fingerprinted() -> None:
    fo = MultiModelFailover([ScriptedClient("a")], fingerprint_prompts=True)
    try:
        assert await fo.call("half a pair: \udc80") == "a answered"
    finally:
        await fo.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("prompt", "name"),
    [(42, "int"), (None, "NoneType"), (b"bytes", "bytes"), ({"a": 1}, "dict"), ([1, 2], "list")],
)
async def test_a_non_str_prompt_is_a_type_error_naming_its_type(prompt: object, name: str) -> None:
    client = ScriptedClient("a")
    fo = MultiModelFailover([client])
    try:
        with pytest.raises(TypeError, match=rf"\b{name}\b"):
            await fo.call(prompt)
        assert client.calls == 0
        assert fo.metrics().calls == 0, "a refused prompt was recorded as a call"
    finally:
        await fo.aclose()
