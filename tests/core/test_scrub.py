"""Scrubbing: key shapes, credentials in headers and URLs, and echoes of the prompt."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devs.risks.multi_model_failover.core.scrub import REDACTED, scrub, without_prompt


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Basic dXNlcjpzM2NyZXQ=", "Authorization: Basic "),
        ("authorization=Token 9f8e7d6c5b4a", "authorization=Token "),
        ('{"Authorization": "Bearer abcdefgh12345678"}', '{"Authorization": "Bearer '),
        ("x-api-key: abcdefghijkl", "x-api-key: "),
        ("postgresql://failover:hunter2hunter2@db:5432/log", "postgresql://failover:"),
        ('{"api_key": "zq9-secret-value"}', '{"api_key": "'),
        ("GET /v1?key=abcdef123456&q=1", "GET /v1?key="),
        ("token hf_abcdefghijklmnopqrstuvwxyz123456 refused", "token "),
        ("groq gsk_abcdefghijklmnopqrstuvwxyz1234567890 bad", "groq "),
        ("stripe sk_live_abcdefghijklmnop1234 bad", "stripe "),
        ("xai-abcdefghijklmnopqrstuvwxyz12 unknown", ""),
        ("github_pat_11ABCDEFG0abcdefghijklmnop_qrstuv rejected", ""),
    ],
)
def test_credentials_are_redacted_and_their_labels_kept(text: str, kept: str) -> None:
    scrubbed = scrub(text)
    assert REDACTED in scrubbed
    assert scrubbed.startswith(kept)
    secret = text[len(kept) :].split(maxsplit=1)[0].strip('"}&')
    assert secret[:8] not in scrubbed


@pytest.mark.parametrize(
    "prompt",
    [
        "summarise the quarterly numbers",
        'it\'s a "quoted" prompt\\with a backslash',
        "café, naïve, 東京 and an emoji 🎉",
        "line one\nline two\ttabbed",
    ],
)
@pytest.mark.parametrize(
    "quote", [lambda p: p, repr, json.dumps], ids=["as written", "repr", "json"]
)
def test_an_echoed_prompt_is_replaced_in_every_quoting(prompt: str, quote: object) -> None:
    message = f"content policy violation in input: {quote(prompt)} (request 42)"  # type: ignore[operator]
    cleaned = without_prompt(message, prompt)
    assert "[prompt]" in cleaned
    assert prompt not in cleaned
    assert cleaned.endswith("(request 42)")


def test_chat_prompts_are_looked_for_message_by_message() -> None:
    prompt = [
        {"role": "system", "content": "you are terse"},
        {"role": "user", "content": "what is my account number 12345678"},
    ]
    message = "rejected: 'what is my account number 12345678'"
    assert without_prompt(message, prompt) == "rejected: '[prompt]'"


def test_short_prompt_fragments_are_left_alone() -> None:
    # Under 8 characters a "prompt" is too likely to be an ordinary word of the error.
    assert without_prompt("bad request: timeout", "timeout") == "bad request: timeout"


@given(st.text(min_size=8, max_size=60), st.sampled_from(["plain", "repr", "json"]))
def test_any_prompt_quoted_any_way_is_caught(prompt: str, quoting: str) -> None:
    quoted = {"plain": prompt, "repr": repr(prompt), "json": json.dumps(prompt)}[quoting]
    cleaned = without_prompt(f"error: <{quoted}> end", prompt)
    assert "[prompt]" in cleaned
    assert cleaned.startswith("error: <")
    assert cleaned.endswith("> end")
