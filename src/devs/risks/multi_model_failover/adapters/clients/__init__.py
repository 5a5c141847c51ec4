"""Model clients: ``openai`` (Chat Completions), ``anthropic`` (Messages) and ``callable``.

The HTTP clients share one pooled ``httpx.AsyncClient`` each (close it with ``aclose()``),
never retry on their own, and raise ``ModelError`` with the kind that decides what the engine
does next (see ``errors``). Their ``stream`` returns a ``TextStream``, which says once it ended
what the provider reported (usage, finish reason, model, request id).
"""

from __future__ import annotations

from .anthropic import AnthropicClient
from .base import HTTPModelClient, TextStream
from .build import build_client, build_clients
from .function import CallableClient, import_target
from .openai import OpenAIClient

__all__ = [
    "AnthropicClient",
    "CallableClient",
    "HTTPModelClient",
    "OpenAIClient",
    "TextStream",
    "build_client",
    "build_clients",
    "import_target",
]
