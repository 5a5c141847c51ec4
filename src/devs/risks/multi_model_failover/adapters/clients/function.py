"""The ``callable`` kind: any sync or async function as a model client."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import anyio

from ...core.errors import ConfigError


class CallableClient:
    """Wraps a sync or async function ``fn(prompt) -> response`` as a ``ModelClient``.

    A sync function runs on the event loop's thread: keep it quick, or make it async.
    """

    def __init__(self, fn: Callable[[Any], Any], *, model_id: str | None = None) -> None:
        self.fn = fn
        self.model_id = model_id

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"CallableClient(model_id={self.model_id!r}, fn={name})"

    async def call(self, prompt: Any) -> Any:
        """The function's answer to ``prompt`` (awaited when it is awaitable)."""
        result = self.fn(prompt)
        if inspect.isawaitable(result):
            return await result
        return result

    async def health_check(self) -> bool:
        """Always True: a function has no endpoint to probe."""
        await anyio.lowlevel.checkpoint()
        return True


def import_target(target: str, *, client_id: str) -> Callable[[Any], Any]:
    """Import ``package.module:function``; ConfigError naming the client when it fails."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"client {client_id!r}: target must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"client {client_id!r}: cannot import target {target!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"client {client_id!r}: target {target!r} is not callable")
    return obj  # type: ignore[no-any-return]
