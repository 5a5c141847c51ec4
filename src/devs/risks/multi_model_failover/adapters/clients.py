"""Model clients built from configuration (the HTTP adapters arrive with the adapters issue)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from ..core.errors import ConfigError
from .config import ClientConfig


class CallableClient:
    """Wraps a sync or async function ``fn(prompt) -> response`` as a ``ModelClient``."""

    def __init__(self, fn: Callable[[Any], Any], *, model_id: str | None = None) -> None:
        self.fn = fn
        self.model_id = model_id

    async def call(self, prompt: Any) -> Any:
        result = self.fn(prompt)
        if hasattr(result, "__await__"):
            return await result
        return result

    async def health_check(self) -> bool:
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


def build_client(config: ClientConfig, *, env: Mapping[str, str] | None = None) -> Any:
    """One ``ModelClient`` from its configuration entry."""
    if config.kind == "callable":
        return CallableClient(
            import_target(config.target or "", client_id=config.id), model_id=config.id
        )
    raise ConfigError(f"client {config.id!r}: kind {config.kind!r} is not available yet")


def build_clients(
    configs: Sequence[ClientConfig], *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every configured client, keyed by id, in configured order."""
    return {config.id: build_client(config, env=env) for config in configs}
