"""Opt-in prompt fingerprints: a salted hash and the length, never the text.

They let an operator match repeated prompts without the log ever holding one. The salt is
injected (the facade draws it at random per engine), so core draws nothing itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgspec


def fingerprinter(salt: bytes) -> Callable[[Any], tuple[int, str]]:
    """A function giving a prompt's length in characters and its salted hash."""

    def fingerprint(prompt: Any) -> tuple[int, str]:
        text = prompt if isinstance(prompt, str) else msgspec.json.encode(prompt).decode()
        # surrogatepass: a str may hold lone surrogates (from JSON, say); hash it all the same.
        data = text.encode("utf-8", "surrogatepass")
        return len(text), hmac.new(salt, data, hashlib.sha256).hexdigest()[:32]

    return fingerprint
