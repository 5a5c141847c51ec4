"""Scrubbing of secrets from any text that may reach a log line, an event or an exception.

Two layers: the exact values of configured secrets (API keys read from environment variables),
and patterns for the common key and token shapes of the providers we talk to.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"

# Key and token shapes that must never be stored, whether or not we configured them, each with
# its replacement (a template: the name or scheme before the secret is kept).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"), REDACTED),  # Stripe
    (re.compile(r"AIza[0-9A-Za-z_\-]{20,}"), REDACTED),  # Google
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), REDACTED),  # Hugging Face
    (re.compile(r"\bgsk_[A-Za-z0-9]{20,}"), REDACTED),  # Groq
    (re.compile(r"\bxai-[A-Za-z0-9]{20,}"), REDACTED),  # xAI
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), REDACTED),  # Slack
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),  # AWS
    (re.compile(r"(?i)\b(Bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\1 {REDACTED}"),
    (
        re.compile(r"(?i)\b((?:api[_-]?)?key|token|access_token|secret|password)=[^&\s\"']+"),
        rf"\1={REDACTED}",
    ),
    # A scheme word (Basic, Token...) is kept; the credential after it is what must go.
    (
        re.compile(
            r"(?i)(x-api-key|api-key|authorization)(\"?\s*[:=]\s*\"?)"
            r"((?:basic|bearer|token|digest|apikey|key)\s+)?[^\s\",}]+"
        ),
        rf"\1\2\3{REDACTED}",
    ),
    # JSON fields: "api_key": "...", "password": "...".
    (
        re.compile(
            r"(?i)(\"(?:api[_-]?key|access[_-]?token|secret|password|token)\"\s*:\s*\")[^\"]+"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), rf"\1{REDACTED}@"),  # user:password@host
)

_known_secrets: set[str] = set()
_known_lock = threading.Lock()

# Below this length a value is too likely to occur in ordinary text to be replaced blindly.
_MIN_SECRET_LENGTH = 6


def register_secret(value: str | None) -> None:
    """Remember ``value`` (an API key read at start-up) so that it is scrubbed everywhere."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _known_lock:
            _known_secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember several secret values at once."""
    for value in values:
        register_secret(value)


def scrub(text: str) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced."""
    if not text:
        return text
    with _known_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def describe_exception(exc: BaseException, *, limit: int = 500, prompt: object = None) -> str:
    """A short, scrubbed, one-line description of ``exc`` for events and logs; ``prompt``'s
    echoes go first, while the text still has its own line breaks (a prompt of short lines
    would no longer be recognised once they are spaces)."""
    message = str(exc)
    if prompt is not None:
        message = without_prompt(message, prompt)
    message = " ".join(message.splitlines()).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


PROMPT_REDACTED = "[prompt]"
# Shorter fragments are too likely to be ordinary words of the provider's own message.
_MIN_PROMPT_FRAGMENT = 8
_ESCAPED = re.compile(r"[\"'\\]")


def _prompt_texts(prompt: object) -> list[str]:
    """The texts of a prompt: the str itself, or every string inside chat messages."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, dict):
        return [text for value in prompt.values() for text in _prompt_texts(value)]
    if isinstance(prompt, list | tuple):
        return [text for item in prompt for text in _prompt_texts(item)]
    return []


def without_prompt(message: str, prompt: object) -> str:
    """``message`` with any echo of ``prompt`` replaced by ``[prompt]``.

    Providers often quote the offending input in their error text, whole or cut; prompts are
    never stored, so the quote goes, as written and as ``repr`` or JSON would escape it: the
    whole text, any run of it of ``_ECHO_RUN`` characters or more, and a cut end of it (its
    start ending the message, or its end starting it) of ``_MIN_PROMPT_FRAGMENT`` or more.
    """
    texts = (prompt,) if isinstance(prompt, str) else _prompt_texts(prompt)
    for text in sorted(texts, key=len, reverse=True):
        if len(text) < _MIN_PROMPT_FRAGMENT:
            continue
        for form, pieces in _forms(text):
            if form in message:
                message = message.replace(form, PROMPT_REDACTED)
            # Every echo this looks for holds one of these pieces: none, no echo (the usual).
            if not any(piece in message for piece in pieces):
                continue
            message = _without_runs(message, form)
            message = _without_cut_ends(message, form)
    return message


@functools.lru_cache(maxsize=16)
def _forms(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each quoted form of ``text`` with the pieces any echo of it holds: its sampled grams,
    its first and its last ``_MIN_PROMPT_FRAGMENT`` characters."""
    return tuple((form, _pieces(form)) for form in _quoted_forms(text))


def _pieces(text: str) -> tuple[str, ...]:
    index, _ = _grams(text) if len(text) >= _GRAM else ({}, 0)
    return (*index, text[:_MIN_PROMPT_FRAGMENT], text[-_MIN_PROMPT_FRAGMENT:])


# A run of the prompt this long inside a message is an echo, not a coincidence.
_ECHO_RUN = 16
_GRAM = _ECHO_RUN // 2
# Grams indexed per prompt at most: past it the stride grows (only longer runs are found).
_MOST_GRAMS = 50_000


@functools.lru_cache(maxsize=16)
def _grams(text: str) -> tuple[dict[str, int], int]:
    """Where ``text``'s grams start, sampled every ``stride`` characters. Any run of
    ``stride + _GRAM - 1`` characters of ``text`` holds one of them."""
    stride = max(_GRAM, len(text) // _MOST_GRAMS)
    index: dict[str, int] = {}
    for start in range(0, len(text) - _GRAM + 1, stride):
        index.setdefault(text[start : start + _GRAM], start)
    return index, stride


def _without_runs(message: str, text: str) -> str:
    """``message`` with every long run it shares with ``text`` replaced by ``[prompt]``."""
    if len(message) < _ECHO_RUN or len(text) < _ECHO_RUN:
        return message
    index, _ = _grams(text)
    spans: list[tuple[int, int]] = []
    at = 0
    while at <= len(message) - _GRAM:
        start = index.get(message[at : at + _GRAM])
        if start is None:
            at += 1
            continue
        left, right = _extend(message, text, at, start)
        if right - left >= _ECHO_RUN:
            spans.append((left, right))
            at = right
        else:
            at += 1
    return _replace_spans(message, spans)


def _extend(message: str, text: str, at: int, start: int) -> tuple[int, int]:
    """The widest span of ``message`` around ``at`` that equals ``text`` around ``start``."""
    left, back = at, start
    while left > 0 and back > 0 and message[left - 1] == text[back - 1]:
        left, back = left - 1, back - 1
    right, ahead = at + _GRAM, start + _GRAM
    while right < len(message) and ahead < len(text) and message[right] == text[ahead]:
        right, ahead = right + 1, ahead + 1
    return left, right


def _without_cut_ends(message: str, text: str) -> str:
    """A message cut in the middle of an echo ends with the prompt's start (maybe followed
    by an ellipsis), or starts with the prompt's end: those go too."""
    body = message.rstrip(". …")
    head = text[:_MIN_PROMPT_FRAGMENT]
    at = body.find(head)
    while at != -1:
        if text.startswith(body[at:]):
            message = body[:at] + PROMPT_REDACTED + message[len(body) :]
            break
        at = body.find(head, at + 1)
    tail = text[-_MIN_PROMPT_FRAGMENT:]
    at = message.find(tail)
    while at != -1:
        end = at + len(tail)
        if text.endswith(message[:end]):
            return PROMPT_REDACTED + message[end:]
        at = message.find(tail, at + 1)
    return message


def _replace_spans(message: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return message
    parts, last = [], 0
    for left, right in spans:
        parts += [message[last:left], PROMPT_REDACTED]
        last = right
    parts.append(message[last:])
    return "".join(parts)


def _quoted_forms(text: str) -> set[str] | tuple[str]:
    """``text`` as written, and as ``repr`` and JSON would escape it inside quotes."""
    if text.isascii() and text.isprintable() and not _ESCAPED.search(text):
        return (text,)  # nothing to escape: every form is the text itself (the common case)
    return {text, repr(text)[1:-1], json.dumps(text)[1:-1]}
