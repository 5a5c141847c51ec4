"""Model clients: ``openai`` (Chat Completions), ``anthropic`` (Messages) and ``callable``.

The HTTP clients share one pooled ``httpx.AsyncClient`` each (close it with ``aclose()``),
never retry on their own, and raise ``ModelError`` with the kind that decides what the engine
does next (see ``errors``). Their ``call(prompt, params=None)`` returns a ``ModelResponse``
(text, tool calls, usage...); their ``stream(prompt, params=None)`` a ``TextStream``, which
says once it ended what the provider reported (usage, finish reason, model, request id, tool
calls).

Both take one request shape, OpenAI's: chat messages (with ``tool_calls`` and ``tool``
results) and ``params`` per call (``temperature``, ``max_tokens``, ``stop``, ``seed``,
``tools``, ``tool_choice``, ``response_format``...), merged over the configured ``params``
for that call only (``options``). The OpenAI client sends them as they are; the Anthropic
client translates them (``anthropic_request``). An option a protocol cannot express is a
``ModelError(kind=bad_request)`` naming it, raised before any request is sent.
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
