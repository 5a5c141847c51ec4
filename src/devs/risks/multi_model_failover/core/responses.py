"""What the bundled adapters return: the answer and how it was served."""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts as the provider reported them."""

    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output tokens, when both are known."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer: ``text``, the ``model`` as served, why it stopped, usage, latency (s)."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    request_id: str | None = None
    latency: float = 0.0
