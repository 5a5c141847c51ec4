"""What the bundled adapters return: the answer and how it was served; streams of chunks.

A tool call is the same from both wire protocols: ``id``, ``name`` and ``arguments``, a JSON
document as a string, encoded by msgspec whichever protocol (OpenAI's ``function.arguments``,
Anthropic's ``tool_use`` input) and whether whole or streamed brought it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import msgspec

_Chunk_co = TypeVar("_Chunk_co", covariant=True)


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


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model asks the caller to run: its call ``id`` (to answer it with a
    ``tool`` message), the function's ``name`` and its ``arguments`` as a JSON string."""

    id: str
    name: str
    arguments: str


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer: ``text``, the ``model`` as served, why it stopped, usage, latency (s)
    and the ``tool_calls`` it asks for (``finish_reason`` is then ``tool_calls``)."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    request_id: str | None = None
    latency: float = 0.0
    tool_calls: tuple[ToolCall, ...] = ()


class ChunkStream(Generic[_Chunk_co]):
    """An async iterator over a generator of chunks. ``aclose()``, ``async with`` and
    ``contextlib.aclosing`` stop it early and release what it holds (a connection)."""

    _chunks: AsyncGenerator[Any, None]

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Awaitable[_Chunk_co]:
        return self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and release what it holds."""
        await self._chunks.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
