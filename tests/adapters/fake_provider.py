"""A real HTTP/1.1 server on 127.0.0.1, in a thread, scripted per path.

It speaks whatever a test scripts: JSON answers, server-sent events (chunked), and faults
that a mock transport cannot produce: a connection dropped mid-body, an answer that never
comes (until the test ends), invalid JSON.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``body``: bytes, text, or a JSON-able object. ``hang``: wait (until the server stops)
    before answering. ``cut_at``: announce the whole body but send only this many bytes, then
    drop the connection. ``events``: server-sent event blocks, sent as one chunk each;
    ``drop``: drop the connection after them instead of ending the stream properly;
    ``stall``: after them, send nothing more until the server stops, then drop.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    cut_at: int | None = None
    events: tuple[str, ...] | None = None
    drop: bool = False
    stall: bool = False

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class Request:
    """What the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int = 0  # the client's port: the same port means the same connection

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads ``requests`` instead."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        provider = self.server.provider
        request = Request(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            port=self.client_address[1],
        )
        reply = provider.next_reply(request)
        if reply.hang:
            provider.wait_for_release()
            self.close_connection = True
            return
        try:
            if reply.events is not None:
                self._send_events(reply)
            else:
                self._send(reply)
        except OSError:
            self.close_connection = True  # the client gave up first

    def _head(self, reply: Reply, headers: dict[str, str]) -> None:
        self.send_response(reply.status)
        for name, value in {**headers, **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, reply: Reply) -> None:
        payload = reply.payload()
        self._head(reply, {**JSON, "content-length": str(len(payload))})
        if reply.cut_at is None:
            self.wfile.write(payload)
            return
        self.wfile.write(payload[: reply.cut_at])
        self._drop()

    def _send_events(self, reply: Reply) -> None:
        self._head(reply, {"content-type": "text/event-stream", "transfer-encoding": "chunked"})
        for block in reply.events or ():
            data = block.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if reply.stall:
            self.server.provider.wait_for_release()
        if reply.drop or reply.stall:
            self._drop()
            return
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: FakeProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped and abandoned connections are what these tests are about: stay quiet."""


class FakeProvider:
    """Scripted answers per path; unscripted paths get ``default`` (per path) or a 404."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Reply]] = collections.defaultdict(
            collections.deque
        )
        self._defaults: dict[str, Reply] = {}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.provider = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, path: str, *replies: Reply, then: Reply | None = None) -> None:
        """Answer ``path`` with ``replies`` in turn, then with ``then`` (if given) forever."""
        with self._lock:
            self._queues[path].extend(replies)
            if then is not None:
                self._defaults[path] = then

    def next_reply(self, request: Request) -> Reply:
        path = request.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(request)
            queue = self._queues[path]
            if queue:
                return queue.popleft()
            return self._defaults.get(path, Reply(404, {"error": {"message": "no such path"}}))

    def sent_to(self, path: str) -> list[Request]:
        """The requests ``path`` received, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def hits(self, path: str) -> int:
        """How many requests ``path`` received."""
        return len(self.sent_to(path))

    def wait_for_release(self) -> None:
        """Block (a handler thread) until the test ends."""
        with self._lock:
            released = self.stopping
        released.wait()

    def release(self) -> None:
        """Let every hanging answer go (they end without a reply)."""
        with self._lock:
            self.stopping.set()
            self.stopping = threading.Event()

    def reset(self) -> None:
        """Forget scripts and requests, for the next test."""
        self.release()
        with self._lock:
            self.requests.clear()
            self._queues.clear()
            self._defaults.clear()

    def start(self) -> FakeProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- what each wire protocol says ------------------------------------------------------


def openai_completion(
    text: str, *, model: str = "gpt-test-2024", finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def openai_error(message: str, *, type_: str = "invalid_request_error", code: Any = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_message(
    text: str, *, model: str = "claude-test-20250101", stop_reason: str = "end_turn"
) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def anthropic_error(type_: str, message: str) -> Any:
    return {"type": "error", "error": {"type": type_, "message": message}}


def sse(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


def openai_events(chunks: Iterable[str], *, done: bool = True) -> tuple[str, ...]:
    blocks = [sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    blocks += [sse({"choices": [{"index": 0, "delta": {"content": c}}]}) for c in chunks]
    if done:
        blocks.append(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        blocks.append(sse("[DONE]"))
    return tuple(blocks)


def anthropic_events(chunks: Iterable[str], *, done: bool = True) -> tuple[str, ...]:
    blocks = [
        sse({"type": "message_start", "message": {"id": "msg_01", "content": []}}, "message_start"),
        sse({"type": "content_block_start", "index": 0}, "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]
    blocks += [
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}},
            "content_block_delta",
        )
        for c in chunks
    ]
    if done:
        blocks.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        blocks.append(
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}, "message_delta")
        )
        blocks.append(sse({"type": "message_stop"}, "message_stop"))
    return tuple(blocks)


# -- tool calls in each wire protocol ----------------------------------------------------
# ``calls``: (id, name, arguments as a dict) per call.


def openai_tool_calls(
    calls: Iterable[tuple[str, str, dict[str, Any]]],
    *,
    text: str | None = None,
    model: str = "gpt-test-2024",
) -> dict[str, Any]:
    """A chat completion asking for ``calls`` (arguments as compact JSON, as OpenAI sends)."""
    answer = openai_completion(text or "", model=model, finish_reason="tool_calls")
    answer["choices"][0]["message"] = {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {
                "id": id_,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, separators=(",", ":"))},
            }
            for id_, name, args in calls
        ],
    }
    return answer


def anthropic_tool_use(
    calls: Iterable[tuple[str, str, dict[str, Any]]],
    *,
    text: str | None = None,
    model: str = "claude-test-20250101",
) -> dict[str, Any]:
    """A message whose content is ``text`` (if any), then a ``tool_use`` block per call."""
    answer = anthropic_message(text or "", model=model, stop_reason="tool_use")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
    answer["content"] = blocks
    return answer


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def openai_tool_events(
    calls: Iterable[tuple[str, str, dict[str, Any]]], *, text: str = "", size: int = 7
) -> tuple[str, ...]:
    """A stream of ``text`` then ``calls``, each call's arguments in fragments of ``size``."""
    blocks = list(openai_events([text] if text else [], done=False))
    for index, (id_, name, args) in enumerate(calls):
        head = {"index": index, "id": id_, "type": "function"}
        head["function"] = {"name": name, "arguments": ""}
        blocks.append(sse({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]}))
        for piece in _pieces(json.dumps(args, separators=(",", ":")), size):
            part = {"index": index, "function": {"arguments": piece}}
            blocks.append(sse({"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]}))
    finish = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    blocks.append(sse({"choices": [finish]}))
    blocks.append(sse("[DONE]"))
    return tuple(blocks)


def anthropic_tool_events(
    calls: Iterable[tuple[str, str, dict[str, Any]]],
    *,
    text: str = "",
    size: int = 7,
    stop_reason: str = "tool_use",
) -> tuple[str, ...]:
    """A stream of a text block (if ``text``), then a ``tool_use`` block per call whose input
    comes in ``input_json_delta`` pieces of ``size``."""
    blocks = [
        sse({"type": "message_start", "message": {"id": "msg_01", "content": []}}, "message_start")
    ]
    index = 0
    if text:
        start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        delta = {"type": "text_delta", "text": text}
        blocks += [
            sse(start, "content_block_start"),
            sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"),
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        ]
        index = 1
    for id_, name, args in calls:
        block = {"type": "tool_use", "id": id_, "name": name, "input": {}}
        start = {"type": "content_block_start", "index": index, "content_block": block}
        blocks.append(sse(start, "content_block_start"))
        for piece in _pieces(json.dumps(args), size):
            delta = {"type": "input_json_delta", "partial_json": piece}
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            blocks.append(sse(event, "content_block_delta"))
        blocks.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    stop = {"type": "message_delta", "delta": {"stop_reason": stop_reason}}
    blocks.append(sse(stop, "message_delta"))
    blocks.append(sse({"type": "message_stop"}, "message_stop"))
    return tuple(blocks)
