"""Token usage and what it costs: the counts a response reports, and a model's price.

A response's usage is read where the bundled clients put it (``response.usage``, a ``Usage``)
and, for other clients, from any object or mapping with ``input_tokens`` / ``output_tokens``
(or OpenAI's ``prompt_tokens`` / ``completion_tokens``). A count that is missing, negative,
not an integer or above ``MAX_TOKENS`` (a trillion: no model reads or writes that much in one
answer) is unknown, never guessed. A price is at most ``MAX_PRICE`` USD per million tokens,
so that no sum of costs can overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from .responses import Usage

MAX_TOKENS: Final = 10**12
MAX_PRICE: Final = 1e6
_NAMES: Final = (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens"))
Tokens = tuple[int | None, int | None]
NO_TOKENS: Final[Tokens] = (None, None)


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """What a model costs, in USD per million input and output tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"price {name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or not 0 <= value <= MAX_PRICE:
                raise ValueError(
                    f"price {name} must be a number from 0 to {MAX_PRICE:g} "
                    f"(USD per million tokens), got {value!r}"
                )

    @classmethod
    def coerce(cls, value: Price | Mapping[str, Any], *, name: str = "price") -> Price:
        """``value`` as a ``Price``: one already, or a mapping with ``input`` and ``output``."""
        if isinstance(value, Price):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{name} must be a Price or a mapping with input and output, "
                f"got {type(value).__name__}"
            )
        unknown = set(value) - {"input", "output"}
        if unknown:
            raise ValueError(f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        missing = [key for key in ("input", "output") if key not in value]
        if missing:
            raise ValueError(f"{name}: missing {' and '.join(missing)} (USD per 1M tokens)")
        try:
            return cls(input=value["input"], output=value["output"])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None

    def cost(self, tokens: Tokens) -> float | None:
        """USD for the counts of ``tokens`` (input, output) that were reported (one that was
        not adds nothing); None when neither was."""
        input_tokens, output_tokens = tokens
        if input_tokens is None and output_tokens is None:
            return None
        spent = (input_tokens or 0) * self.input + (output_tokens or 0) * self.output
        return spent / 1_000_000


def prices_by_model(
    prices: Mapping[str, Price | Mapping[str, Any]] | None, check_known: Callable[[str], None]
) -> dict[str, Price]:
    """``prices`` by model id, each a ``Price``; ``check_known`` raises for an unknown id."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise TypeError(
            f"prices must be a mapping of model id to price, got {type(prices).__name__}"
        )
    for model_id in prices:
        check_known(model_id)
    return {
        model_id: Price.coerce(price, name=f"prices[{model_id!r}]")
        for model_id, price in prices.items()
    }


def tokens_of(usage: object) -> Tokens:
    """The (input, output) token counts ``usage`` reports; None for each one it does not."""
    if usage is None:
        return NO_TOKENS
    if isinstance(usage, Usage):
        return _count(usage.input_tokens), _count(usage.output_tokens)
    if isinstance(usage, Mapping):
        found = [_first(usage.get, names) for names in _NAMES]
    else:
        found = [_first(lambda n: getattr(usage, n, None), names) for names in _NAMES]
    return found[0], found[1]


def response_tokens(response: object) -> Tokens:
    """The token counts of a client's answer (its ``usage``), when it reports them."""
    if type(response) is str:  # a plain client's answer: no lookup on the hot path
        return NO_TOKENS
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    return tokens_of(usage)


def _first(get: Any, names: tuple[str, str]) -> int | None:
    for name in names:
        count = _count(get(name))
        if count is not None:
            return count
    return None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


__all__ = ["NO_TOKENS", "Price", "Tokens", "prices_by_model", "response_tokens", "tokens_of"]
