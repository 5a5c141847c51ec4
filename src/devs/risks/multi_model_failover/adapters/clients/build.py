"""Model clients from configuration entries.

Everything that can be wrong with an entry (a missing key variable, a target that does not
import, a base URL that is not HTTP, ``params`` the client's protocol cannot express or its
function does not take) is found when the clients are built, at start-up, not at the first
call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...core.errors import ConfigError, ModelError
from ...core.scrub import scrub
from ..config import ClientConfig, resolve_api_key
from . import anthropic, openai
from .function import CallableClient, import_target, takes_params

_DEFAULT_BASE_URLS = {"openai": openai.DEFAULT_BASE_URL, "anthropic": anthropic.DEFAULT_BASE_URL}


def _base_url(config: ClientConfig) -> str:
    url = config.base_url or _DEFAULT_BASE_URLS[config.kind]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"client {config.id!r}: base_url must start with http:// or https://, "
            f"got {scrub(url)!r}"
        )
    return url


def _factory(config: ClientConfig, env: Mapping[str, str] | None) -> Callable[[], Any]:
    """Check ``config`` now; return what builds its client without failing."""
    if config.kind == "callable":
        fn = import_target(config.target or "", client_id=config.id)
        if config.params and not takes_params(fn):
            raise ConfigError(
                f"client {config.id!r}: params {', '.join(sorted(config.params))} given to "
                f"target {config.target!r}, which takes no params (a parameter named params, "
                "or **kwargs)"
            )
        return lambda: CallableClient(fn, model_id=config.id, params=config.params)
    api_key = resolve_api_key(config, env)
    base_url = _base_url(config)
    cls = openai.OpenAIClient if config.kind == "openai" else anthropic.AnthropicClient
    try:
        cls.check_params(config.params, model_id=config.id)
    except ModelError as exc:
        raise ConfigError(f"client {config.id!r}: {exc.message}") from None
    return lambda: cls(
        model=config.model,
        base_url=base_url,
        api_key=api_key,
        model_id=config.id,
        timeout=config.timeout,
        headers=config.headers,
        params=config.params,
        probe=config.probe,
        prefill=config.prefill,
    )


def build_client(config: ClientConfig, *, env: Mapping[str, str] | None = None) -> Any:
    """One ``ModelClient`` from its configuration entry; ``ConfigError`` when it cannot run.

    ``env`` (default ``os.environ``) holds the variable named by ``api_key_env``.
    """
    return _factory(config, env)()


def build_clients(
    configs: Sequence[ClientConfig], *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Every configured client, keyed by id, in configured order.

    Every entry is checked before any client opens a connection pool, so a bad entry leaves
    nothing to close.
    """
    factories = {config.id: _factory(config, env) for config in configs}
    return {client_id: make() for client_id, make in factories.items()}
