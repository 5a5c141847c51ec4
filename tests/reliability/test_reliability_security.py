"""Security: keys and prompts never leave the process through the log, errors or log lines.

Realistic key formats of several providers are raised inside client errors (attempts, probes,
auth failures). None of them (nor a 12-character fragment of one) may appear in the SQLite
file's raw bytes (``-wal`` included), any event, the exception a caller gets (its message,
``attempts``, ``repr``, its formatted traceback with the whole chain), any log line (message,
``extra`` and exception) or a ``repr``. Prompts are never stored (only, on request, a salted
hash and a length). The log file is created ``0600`` whatever the umask. Every value reaches
SQL as a parameter: ids and reasons that are SQL themselves round-trip unchanged.
"""

from __future__ import annotations

import os
import random
import string
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from reliability_support import ScriptedClient, read_all

from devs.risks.multi_model_failover import (
    AllModelsFailedError,
    ErrorKind,
    HealthState,
    ModelError,
    MultiModelFailover,
    SQLiteEventStore,
    replay,
)
from devs.risks.multi_model_failover.adapters.clients import AnthropicClient, OpenAIClient
from devs.risks.multi_model_failover.adapters.config import parse_config
from devs.risks.multi_model_failover.core.scrub import register_secret

pytestmark = pytest.mark.anyio

_rng = random.Random(20240601)
_URLSAFE = string.ascii_letters + string.digits + "-_"


def _draw(alphabet: str, length: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(length))


KEYS = {
    "openai project": f"sk-proj-{_draw(_URLSAFE, 74)}T3BlbkFJ{_draw(_URLSAFE, 74)}",
    "openai legacy": f"sk-{_draw(string.ascii_letters + string.digits, 48)}",
    "anthropic": f"sk-ant-api03-{_draw(_URLSAFE, 93)}AA",
    "google": f"AIza{_draw(_URLSAFE, 35)}",
    "jwt bearer": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    f"{_draw(_URLSAFE, 60)}.{_draw(_URLSAFE, 43)}",
    "url key": _draw(string.hexdigits.lower(), 40),
    "url api_key": _draw(_URLSAFE, 32),
    "github": f"ghp_{_draw(string.ascii_letters + string.digits, 36)}",
    "aws": f"AKIA{_draw(string.ascii_uppercase + string.digits, 16)}",
    "slack": f"xoxb-{_draw(string.digits, 12)}-{_draw(string.digits, 13)}-"
    f"{_draw(string.ascii_letters + string.digits, 24)}",
    "url token": _draw(_URLSAFE, 40),
    "registered": f"corp-gateway-{uuid.UUID(int=_rng.getrandbits(128)).hex}",
}
register_secret(KEYS["registered"])  # as the HTTP clients do with the key they are given

# How each key shows up in the error texts that providers and HTTP stacks really produce.
MESSAGES = [
    "Error code: 401 - {'error': {'message': 'Incorrect API key provided: "
    f"{KEYS['openai project']}. You can find your API key at "
    "https://platform.openai.com/account/api-keys.', 'code': 'invalid_api_key'}}",
    f"openai.AuthenticationError: Incorrect API key provided: {KEYS['openai legacy']}",
    "anthropic.AuthenticationError: {'type': 'error', 'error': {'type': "
    f"'authentication_error'}}}} request headers: {{'x-api-key': '{KEYS['anthropic']}'}}",
    "400 Client Error: Bad Request for url: https://generativelanguage.googleapis.com/v1beta/"
    f"models/gemini-1.5-pro:generateContent?key={KEYS['google']}",
    f"request failed, headers={{'Authorization': 'Bearer {KEYS['jwt bearer']}'}}",
    f"GET https://maps.example.com/api/geocode?key={KEYS['url key']}&q=x returned 503",
    f"POST https://api.example.com/v1/run?model=m&api_key={KEYS['url api_key']} timed out",
    f"fatal: could not read from https://{KEYS['github']}@github.com/acme/models.git",
    "botocore.exceptions.ClientError: The security token included in the request is "
    f"invalid. (AccessKeyId: {KEYS['aws']})",
    f"gateway refused credentials {KEYS['registered']} for tenant 7",
    f"slack_sdk.errors.SlackApiError: invalid_auth (token {KEYS['slack']})",
    f"GET https://graph.example.com/me?fields=id&access_token={KEYS['url token']} -> 400",
]


def fragments() -> Iterator[tuple[str, str]]:
    """(name, text) for every key and a 12-character piece from its middle and its end."""
    for name, key in KEYS.items():
        yield name, key
        yield f"{name} (middle)", key[len(key) // 2 : len(key) // 2 + 12]
        yield f"{name} (end)", key[-12:]


def assert_no_secret(where: str, text: str | bytes) -> None:
    """No key and no fragment of one in ``text``."""
    data = text.encode() if isinstance(text, str) else text
    leaked = [name for name, piece in fragments() if piece.encode() in data]
    assert not leaked, f"{where} holds {leaked}"


class Raising:
    """An async call (or probe) that raises ``errors`` in turn, round and round."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        self.raised: set[int] = set()
        self._next = 0

    async def __call__(self, *args: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        index = self._next % len(self.errors)
        self._next += 1
        self.raised.add(index)
        raise self.errors[index]


def leaky_errors() -> list[BaseException]:
    """Each message as the exception types clients raise: ModelError kinds, timeouts, any."""
    kinds = [ErrorKind.AUTH, ErrorKind.SERVER, ErrorKind.RATE_LIMITED, ErrorKind.BAD_REQUEST]
    errors: list[BaseException] = []
    for index, message in enumerate(MESSAGES):
        errors.append(ModelError(message, kind=kinds[index % len(kinds)]))
        errors.append(RuntimeError(message))
        errors.append(TimeoutError(message))
        errors.append(ValueError(f"wrapped: {message!r}"))
    return errors


def every_text_of(exc: BaseException) -> Iterator[tuple[str, str]]:
    """Everything an exception can show: str, repr, args, attempts, the formatted chain."""
    yield "str(exc)", str(exc)
    yield "repr(exc)", repr(exc)
    yield "exc.args", repr(exc.args)
    for record in getattr(exc, "attempts", ()):
        yield "exc.attempts", repr(record)
    yield "traceback", "".join(traceback.format_exception(exc))
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        yield "chained exception", f"{seen!r} {seen}"
        seen = seen.__cause__ or seen.__context__


async def test_keys_in_client_errors_reach_no_event_exception_log_line_or_file(
    tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    errors = leaky_errors()
    calls, probes = Raising(errors), Raising(errors)
    clients = {
        "primary": ScriptedClient("primary", call=calls, probe=probes),
        "fallback": ScriptedClient("fallback", call=calls),
    }
    fo = MultiModelFailover(
        clients,
        {"max_attempts": 2, "base_delay": 0.0001, "max_delay": 0.0001},
        health_policy={"unhealthy_after": 1_000_000, "degraded_after": 1_000_000},
        event_store=log,
    )
    caught: list[BaseException] = []
    while len(calls.raised) < len(errors) or len(probes.raised) < len(errors):
        try:
            await fo.call("hello")
        except ModelError as exc:
            caught.append(exc)
        await fo.check_health()
    assert any(isinstance(exc, AllModelsFailedError) for exc in caught)
    assert any(exc.kind is ErrorKind.BAD_REQUEST for exc in caught)  # type: ignore[attr-defined]

    # While open, with the WAL full of fresh commits.
    for file in (log, Path(f"{log}-wal")):
        assert_no_secret(file.name, file.read_bytes())
    for exc in caught:
        for where, text in every_text_of(exc):
            assert_no_secret(where, text)
    for record in log_records:
        assert_no_secret("a log line", repr(record))
    assert_no_secret("metrics and audit", msgspec.json.encode(fo.snapshot()))
    await fo.aclose()

    assert_no_secret("the log file", log.read_bytes())
    events = read_all(log)
    assert any(e.type == "attempt_failed" for e in events)
    for event in events:
        assert_no_secret(f"a {event.type} event", msgspec.json.encode(event))


def test_http_clients_and_config_show_no_key_in_repr() -> None:
    clients = [
        OpenAIClient(
            model="gpt-4o-mini",
            base_url=f"https://gw.example.com/v1?key={KEYS['url key']}",
            api_key=KEYS["openai project"],
            headers={"X-Trace": "1", "Authorization": f"Bearer {KEYS['jwt bearer']}"},
        ),
        AnthropicClient(
            model="claude-haiku-4-5",
            base_url="https://api.anthropic.com",
            api_key=KEYS["anthropic"],
            headers={"x-goog-api-key": KEYS["google"]},
        ),
    ]
    for client in clients:
        assert_no_secret(f"repr of {type(client).__name__}", repr(client))
        assert_no_secret(f"str of {type(client).__name__}", str(client))
        anyio.run(client.aclose)

    config = parse_config(
        {
            "multi_model_failover": {
                "clients": [
                    {
                        "id": "primary",
                        "kind": "openai",
                        "model": "gpt-4o-mini",
                        "api_key_env": "OPENAI_API_KEY",
                        "headers": {"Authorization": f"Bearer {KEYS['jwt bearer']}"},
                    }
                ]
            }
        }
    )
    assert_no_secret("repr of the configuration", repr(config))


# -- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", [False, True], ids=["plain", "fingerprinted"])
async def test_prompts_are_never_stored(
    tmp_path: Path, fingerprint: bool, log_records: list[dict[str, Any]]
) -> None:
    log = tmp_path / "events.sqlite3"
    secret_prompt = f"PROMPT-{uuid.uuid4().hex}: the patient's diagnosis is ..."

    async def flaky(prompt: Any) -> str:
        await anyio.lowlevel.checkpoint()
        raise ModelError("overloaded", kind=ErrorKind.SERVER)

    clients = [ScriptedClient("a", call=flaky), ScriptedClient("b")]
    fo = MultiModelFailover(
        clients, {"max_attempts": 1}, event_store=log, fingerprint_prompts=fingerprint
    )
    for _ in range(3):
        await fo.call(secret_prompt)
        await fo.call([{"role": "user", "content": secret_prompt}])
    wal = await anyio.Path(f"{log}-wal").read_bytes()
    await fo.aclose()

    marker = secret_prompt.split(":", maxsplit=1)[0].encode()
    assert marker not in wal
    assert marker not in log.read_bytes()
    assert not [r for r in log_records if marker.decode() in repr(r)]
    started = [e for e in read_all(log) if e.type == "call_started"]
    hashes = {e.prompt_hash for e in started}  # type: ignore[union-attr]
    if fingerprint:
        assert all(e.prompt_chars for e in started)  # type: ignore[union-attr]
        assert len(hashes) == 2  # the same prompt hashes alike; the chat form differs
    else:
        assert hashes == {None}


async def test_a_prompt_echoed_in_a_client_error_is_not_stored(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    secret_prompt = f"PROMPT-{uuid.uuid4().hex} my card number is 4111 1111 1111 1111"

    async def echo_error(prompt: Any) -> str:
        await anyio.lowlevel.checkpoint()
        raise ModelError(f"content policy violation in input: {prompt!r}", kind="content_filter")

    fo = MultiModelFailover([ScriptedClient("a", call=echo_error)], event_store=log)
    with pytest.raises(ModelError) as caught:  # content_filter fails fast with its own error
        await fo.call(secret_prompt)
    await fo.aclose()
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert secret_prompt not in str(caught.value)
    assert secret_prompt not in repr(caught.value)
    assert secret_prompt.encode() not in log.read_bytes()


# -- the file --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask 022", "umask 000"])
async def test_the_log_file_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    log = tmp_path / "new" / "folder" / "events.sqlite3"
    previous = os.umask(umask)
    try:
        fo = MultiModelFailover([ScriptedClient("a")], event_store=log)
        await fo.call("hi")
        files = [log, Path(f"{log}-wal"), Path(f"{log}-shm")]
        modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}
        await fo.aclose()
    finally:
        os.umask(previous)
    assert modes == dict.fromkeys(modes, "0o600")


SQL_LIKE = [
    "x'; DROP TABLE events; --",
    'a"b',
    "Robert'); DELETE FROM meta WHERE ('1'='1",
    "back\\slash % _ ?",
    "ünïcødé ✓ 🚀",
]


async def test_sql_in_ids_and_reasons_round_trips_unchanged(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite3"
    fo = MultiModelFailover(
        {model_id: ScriptedClient(model_id) for model_id in SQL_LIKE}, event_store=log
    )
    await fo.call("hi")
    await fo.set_maintenance(SQL_LIKE[0], True, reason=SQL_LIKE[2], by=SQL_LIKE[1])
    await fo.call("hi again")
    await fo.aclose()

    snapshot = replay(log)
    assert list(snapshot.states) == SQL_LIKE
    assert snapshot.states[SQL_LIKE[0]].state is HealthState.MAINTENANCE
    entry = snapshot.audit[-1]
    assert (entry.model_id, entry.reason, entry.by) == (SQL_LIKE[0], SQL_LIKE[2], SQL_LIKE[1])
    served = [e.model_id for e in read_all(log) if e.type == "call_succeeded"]  # type: ignore[union-attr]
    assert served == [SQL_LIKE[0], SQL_LIKE[1]]
    with SQLiteEventStore(log, create=False) as store:
        mine = list(store.read(where="model_id = ?", params=(SQL_LIKE[0],)))
        assert mine
        assert {e.model_id for e in mine} == {SQL_LIKE[0]}  # type: ignore[union-attr]
        assert store.count() == len(read_all(log))


@pytest.mark.parametrize("scheme", ["Basic", "Token"])
async def test_an_authorization_header_in_an_error_is_scrubbed_whatever_the_scheme(
    scheme: str,
) -> None:
    credential = KEYS["url api_key"]

    async def dump_headers(prompt: Any) -> str:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError(f"401 Unauthorized; sent Authorization: {scheme} {credential}")

    fo = MultiModelFailover([ScriptedClient("a", call=dump_headers)], {"max_attempts": 1})
    with pytest.raises(AllModelsFailedError) as caught:
        await fo.call("hi")
    await fo.aclose()
    assert credential not in repr(caught.value.attempts)
