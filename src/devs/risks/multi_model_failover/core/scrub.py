"""Scrubbing of secrets from any text that may reach a log line, an event or an exception.

Two layers: the exact values of configured secrets (API keys read from environment variables),
and patterns for the common key and token shapes of the providers we talk to.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"

# Key and token shapes that must never be stored, whether or not we configured them.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)\b((?:api[_-]?)?key|token|access_token|secret)=[^&\s\"']+"),
    re.compile(r"(?i)(x-api-key|api-key|authorization)(\"?\s*[:=]\s*\"?)[^\s\",}]+"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
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


def _pattern_replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    if "=" in text and not text.lower().startswith(("x-api-key", "api-key", "authorization")):
        name = text.split("=", 1)[0]
        return f"{name}={REDACTED}"
    if match.re.groups >= 2 and match.lastindex and match.lastindex >= 2:
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    if text.lower().startswith("bearer"):
        return f"Bearer {REDACTED}"
    return REDACTED


def scrub(text: str) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced."""
    if not text:
        return text
    with _known_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(_pattern_replacement, text)
    return text


def describe_exception(exc: BaseException, *, limit: int = 500) -> str:
    """A short, scrubbed, one-line description of ``exc`` for events and logs."""
    message = str(exc).replace("\n", " ").strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
