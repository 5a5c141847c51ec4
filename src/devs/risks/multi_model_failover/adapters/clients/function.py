"""The ``callable`` kind: any sync or async function as a model client.

Per-call ``params`` reach the function only when it takes them: a parameter named ``params``
(or ``**kwargs``). A function that does not is never called with options it would ignore:
``call`` refuses them (``ModelError(kind=bad_request)`` naming the keys).

Configured ``params`` (the client's own, as for the HTTP clients) reach every call, with a
call's ``params`` merged over them: a new dict each call, so nothing leaks into the next. The
function gets the merged options as they are (a None included: what it means is the
function's to say). A function that takes no params cannot be configured with some
(``ValueError``; a ``ConfigError`` from configuration).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ...core.errors import ConfigError
from .options import bad_request


def takes_params(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called as ``fn(prompt, params=...)``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature to read
        return False
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == "params" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in parameters
    )


class CallableClient:
    """Wraps a sync or async function ``fn(prompt) -> response`` as a ``ModelClient``.

    ``fn(prompt, params=...)`` gets a call's options, merged over the configured
    ``params``, when it takes them (see the module's docstring); ``ValueError`` for configured
    ``params`` it does not take. A sync function runs on the event loop's thread: keep it
    quick, or make it async.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        model_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.model_id = model_id
        self.takes_params = takes_params(fn)
        self.params = dict(params or {})
        if self.params and not self.takes_params:
            raise ValueError(
                f"{model_id or 'callable client'}: params "
                f"{', '.join(sorted(map(str, self.params)))} configured for a function that "
                "takes no params"
            )

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"CallableClient(model_id={self.model_id!r}, fn={name})"

    async def call(self, prompt: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The function's answer to ``prompt`` (awaited when it is awaitable), given
        ``params`` over the configured ones when it takes them; ``ModelError(kind=bad_request)``
        naming the keys of non-empty ``params`` it does not take (the function is not
        called)."""
        if (params is not None or self.params) and self.takes_params:
            result = self.fn(prompt, params={**self.params, **(params or {})})
        elif params:
            raise bad_request(
                f"params {', '.join(sorted(map(str, params)))}: the function takes no params",
                model_id=self.model_id,
            )
        else:
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
