"""Server-sent events, as both wire protocols stream them.

Lines end with ``\\r\\n``, ``\\n`` or ``\\r`` and nothing else (``str.splitlines`` would also
split on characters JSON may carry raw, such as U+2028). A blank line ends an event; an event
at the end of the stream without its blank line is incomplete and dropped, as the spec says.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import aclosing
from typing import Final

import msgspec

_EOL: Final = re.compile(rb"\r\n|\r|\n")


class ServerSentEvent(msgspec.Struct, frozen=True):
    """One event: its ``event`` name (``"message"`` when unnamed) and its ``data``."""

    event: str = "message"
    data: str = ""


def split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines in ``buffer`` and the unfinished rest.

    A trailing ``\\r`` stays in the rest: it may be the first half of ``\\r\\n``.
    """
    held = b""
    if buffer.endswith(b"\r"):
        buffer, held = buffer[:-1], b"\r"
    parts = _EOL.split(buffer)
    rest = parts.pop()
    return parts, rest + held


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """Decoded lines from a stream of byte chunks."""
    buffer = b""
    async for chunk in chunks:
        lines, buffer = split_lines(buffer + chunk)
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if buffer.rstrip(b"\r"):
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


class SSEDecoder:
    """Turns lines into events; ``feed`` returns an event when a blank line completes one."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its ending)."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data))


async def iter_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[ServerSentEvent, None]:
    """Server-sent events from a stream of byte chunks."""
    decoder = SSEDecoder()
    async with aclosing(iter_lines(chunks)) as lines:
        async for line in lines:
            event = decoder.feed(line)
            if event is not None:
                yield event
