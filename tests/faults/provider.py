"""A faulty LLM provider: a real HTTP/1.1 server on 127.0.0.1, in threads of its own.

Several models live on one server, each under a path prefix of its own name: an OpenAI client
of model ``primary`` has ``base_url`` ``{url}/primary/v1``, an Anthropic one ``{url}/primary``.
Every model answers both wire formats, by route:

- ``POST /v1/chat/completions``: OpenAI Chat Completions, JSON or server-sent events; the
  final usage chunk only when the request asked for it (``stream_options.include_usage``);
- ``POST /v1/messages``: Anthropic Messages, JSON or server-sent events; a request whose last
  message is the assistant's is a prefill, answered with the rest of the answer (or refused
  with a 400 by a model built with ``reject_prefill=True``);
- ``GET /v1/models``: always 200, whatever the model's faults: the trap of a health check
  that asks it instead of trying a real request.

Each model has a fault schedule for its chat requests (health probes included: they are chat
requests too): faults for its next requests in turn (``fail_next``), faults over windows of
``time.monotonic()`` (``fail_between``), and a fault for every other request
(``fail_always``); the faults themselves are in ``catalogue``. The server records every
request it reads (``Seen``): when, for which model, which route, streamed or not, its JSON
body, and which fault it served.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from .catalogue import Fault, prefill_rejected

OPENAI_CHAT: Final = "/v1/chat/completions"
ANTHROPIC_CHAT: Final = "/v1/messages"
MODELS: Final = "/v1/models"
CHAT_ROUTES: Final = {OPENAI_CHAT: "openai", ANTHROPIC_CHAT: "anthropic"}
PROBE_PROMPT: Final = "ping"
# How long a silent or stalled answer holds its connection at most, should nobody release it.
HOLD_LIMIT: Final = 60.0


@dataclass(frozen=True)
class Seen:
    """One request as the server read it. ``at``: ``time.monotonic()`` on arrival."""

    at: float
    model: str
    method: str
    route: str
    body: Any
    fault: str | None
    request_id: str

    @property
    def chat(self) -> bool:
        """A chat request (a call, a stream or a probe), as opposed to ``GET /v1/models``."""
        return self.method == "POST" and self.route in CHAT_ROUTES

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def messages(self) -> list[dict[str, Any]]:
        if not isinstance(self.body, dict):
            return []
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []

    @property
    def probe(self) -> bool:
        """A health probe: a chat request whose only message is the probe's prompt."""
        return self.chat and [(m.get("role"), m.get("content")) for m in self.messages] == [
            ("user", PROBE_PROMPT)
        ]

    @property
    def served(self) -> bool:
        """Answered in full, without a fault."""
        return self.chat and self.fault is None


def message_text(message: dict[str, Any]) -> str:
    """A chat message's text (a string, or Anthropic's list of text blocks)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def prefill_of(body: Any) -> str | None:
    """The text of a request's final assistant message (a prefill), or None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last: dict[str, Any] = messages[-1]
    return message_text(last) if last.get("role") == "assistant" else None


class Model:
    """One model on the server: its answer (as stream chunks), its faults, what it served.

    ``usage``: the (input, output) tokens it reports; ``served``: the model name its answers
    carry (default ``{name}-2025-01-01``).
    """

    def __init__(
        self,
        name: str,
        chunks: tuple[str, ...],
        *,
        usage: tuple[int, int],
        served: str | None = None,
        reject_prefill: bool = False,
    ) -> None:
        self.name = name
        self.chunks = chunks
        self.answer = "".join(chunks)
        self.usage = usage
        self.served = served or f"{name}-2025-01-01"
        self.reject_prefill = reject_prefill
        self._lock = threading.Lock()
        self._next: collections.deque[Fault | None] = collections.deque()
        self._windows: list[tuple[float, float, Fault]] = []
        self._always: Fault | None = None

    def fail_next(self, *faults: Fault | None) -> Model:
        """The next chat requests get these faults in turn (``None``: a good answer)."""
        with self._lock:
            self._next.extend(faults)
        return self

    def fail_between(self, start: float, end: float, fault: Fault) -> Model:
        """Chat requests arriving in ``[start, end)`` (``time.monotonic()``) get ``fault``."""
        with self._lock:
            self._windows.append((start, end, fault))
        return self

    def fail_always(self, fault: Fault | None) -> Model:
        """Every other chat request gets ``fault`` (``None``: healthy again)."""
        with self._lock:
            self._always = fault
        return self

    def fault_for(self, now: float, body: Any) -> Fault | None:
        """The fault for a chat request arriving ``now`` (taken off the queue); else, for a
        model that rejects prefill, the rejection of a request ending with the assistant."""
        with self._lock:
            if self._next:
                scheduled = self._next.popleft()
            else:
                scheduled = next(
                    (fault for start, end, fault in self._windows if start <= now < end),
                    self._always,
                )
        if scheduled is None and self.reject_prefill and prefill_of(body) is not None:
            return prefill_rejected()
        return scheduled

    def rest_after(self, prefill: str) -> tuple[str, ...]:
        """The chunks that continue ``prefill``; the whole answer when it does not fit."""
        if not self.answer.startswith(prefill):
            return self.chunks
        rest: list[str] = []
        position = 0
        for chunk in self.chunks:
            end = position + len(chunk)
            if end > len(prefill):
                rest.append(chunk[max(0, len(prefill) - position) :])
            position = end
        return tuple(rest)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the record instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            self._route(raw)
        except OSError:
            self.close_connection = True  # the client went away first

    def _route(self, raw: bytes) -> None:
        provider = self.server.provider
        arrived = time.monotonic()
        _, name, route = (self.path.split("?", 1)[0] + "/").split("/", 2)
        route = "/" + route.rstrip("/")
        model = provider.models.get(name)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        is_chat = self.command == "POST" and route in CHAT_ROUTES
        fault = model.fault_for(arrived, body) if model is not None and is_chat else None
        request_id = provider.record(arrived, name, self.command, route, body, fault)
        if model is None:
            self._json(404, {"error": {"message": f"no model {name!r}", "type": "not_found"}})
        elif self.command == "GET" and route == MODELS:
            self._json(200, {"object": "list", "data": [{"id": model.served, "object": "model"}]})
        elif not is_chat or not isinstance(body, dict):
            self._json(404, {"error": {"message": f"no route {route}", "type": "not_found"}})
        else:
            _Answer(self, model, CHAT_ROUTES[route], body, request_id).give(fault)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        for header, value in {
            "content-type": "application/json",
            "content-length": str(len(payload)),
            **(headers or {}),
        }.items():
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


class _Answer:
    """One chat answer, in one wire protocol, with or without a fault."""

    def __init__(
        self, handler: _Handler, model: Model, protocol: str, body: dict[str, Any], request_id: str
    ) -> None:
        self.handler = handler
        self.model = model
        self.protocol = protocol
        self.body = body
        self.request_id = request_id
        self.stream = body.get("stream") is True
        self.id_header = "x-request-id" if protocol == "openai" else "request-id"
        self.prefill = prefill_of(body)

    # -- what to send ----------------------------------------------------------------

    def give(self, fault: Fault | None) -> None:
        action = fault.action if fault is not None else None
        if fault is not None and action == "error":
            self._error(fault)
        elif action == "reset":
            self._drop()
        elif action == "silence":
            self.handler.server.provider.hold()
            self._drop()
        elif self.stream:
            self._events(fault)
        else:
            self._whole(fault)

    def _chunks(self) -> tuple[str, ...]:
        if self.prefill is None:
            return self.model.chunks
        return self.model.rest_after(self.prefill)

    def _error(self, fault: Fault) -> None:
        if self.protocol == "openai":
            data: Any = {
                "error": {
                    "message": fault.message,
                    "type": fault.openai_type,
                    "param": None,
                    "code": fault.openai_code,
                }
            }
        else:
            data = {
                "type": "error",
                "error": {"type": fault.anthropic_type, "message": fault.message},
                "request_id": self.request_id,
            }
        self.handler._json(
            fault.status, data, {self.id_header: self.request_id, **dict(fault.headers)}
        )

    # -- whole answers -----------------------------------------------------------------

    def _whole(self, fault: Fault | None) -> None:
        text = "".join(self._chunks())
        refused = fault.message if fault is not None and fault.action == "refusal" else None
        data = (
            self._openai_whole(text, refused)
            if self.protocol == "openai"
            else self._anthropic_whole(text, refused)
        )
        payload = json.dumps(data).encode()
        if fault is not None and fault.action == "malformed":
            payload = payload[: len(payload) // 2] + b"<!-- not json"
        handler = self.handler
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload)))
        handler.send_header(self.id_header, self.request_id)
        handler.end_headers()
        if fault is not None and fault.action in ("cut", "stall"):
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            if fault.action == "stall":
                handler.server.provider.hold()
            self._drop()
            return
        handler.wfile.write(payload)
        handler.wfile.flush()

    def _openai_whole(self, text: str, refused: str | None) -> dict[str, Any]:
        prompt_tokens, completion_tokens = self.model.usage
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if refused is not None:
            message = {"role": "assistant", "content": None, "refusal": refused}
        return {
            "id": f"chatcmpl-{self.request_id}",
            "object": "chat.completion",
            "created": 1735689600,
            "model": self.model.served,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _anthropic_whole(self, text: str, refused: str | None) -> dict[str, Any]:
        input_tokens, output_tokens = self.model.usage
        return {
            "id": f"msg_{self.request_id}",
            "type": "message",
            "role": "assistant",
            "model": self.model.served,
            "content": [{"type": "text", "text": text if refused is None else refused}],
            "stop_reason": "end_turn" if refused is None else "refusal",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }

    # -- streams -----------------------------------------------------------------------

    def _events(self, fault: Fault | None) -> None:
        handler = self.handler
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header(self.id_header, self.request_id)
        handler.end_headers()
        blocks = self._openai_events if self.protocol == "openai" else self._anthropic_events
        action = fault.action if fault is not None else None
        for block in blocks(refused=action == "refusal"):
            if isinstance(block, int):  # the number of text chunks sent so far
                if fault is None or action == "refusal" or block != fault.after:
                    continue
                if action == "malformed":
                    self._send(self._malformed_event())
                    continue
                if action == "stall":
                    handler.server.provider.hold()
                self._drop()
                return
            self._send(block)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def _openai_events(self, *, refused: bool) -> Iterator[str | int]:
        wants_usage = (self.body.get("stream_options") or {}).get("include_usage") is True
        base = {
            "id": f"chatcmpl-{self.request_id}",
            "object": "chat.completion.chunk",
            "created": 1735689600,
            "model": self.model.served,
        }
        extra: dict[str, Any] = {"usage": None} if wants_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse({**base, "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        sent = 0
        yield sent
        for text in () if refused else self._chunks():
            yield chunk({"content": text})
            sent += 1
            yield sent
        yield chunk({}, "content_filter" if refused else "stop")
        if wants_usage:
            prompt_tokens, completion_tokens = self.model.usage
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            yield sse({**base, "choices": [], "usage": usage})
        yield sse("[DONE]")

    def _anthropic_events(self, *, refused: bool) -> Iterator[str | int]:
        input_tokens, output_tokens = self.model.usage
        message: dict[str, Any] = {
            "id": f"msg_{self.request_id}",
            "type": "message",
            "role": "assistant",
            "model": self.model.served,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        yield sse({"type": "message_start", "message": message}, "message_start")
        block = {"type": "text", "text": ""}
        yield sse({"type": "content_block_start", "index": 0, "content_block": block})
        yield sse({"type": "ping"})
        sent = 0
        yield sent
        for text in () if refused else self._chunks():
            delta = {"type": "text_delta", "text": text}
            yield sse({"type": "content_block_delta", "index": 0, "delta": delta})
            sent += 1
            yield sent
        yield sse({"type": "content_block_stop", "index": 0})
        stop = {"stop_reason": "refusal" if refused else "end_turn", "stop_sequence": None}
        yield sse(
            {"type": "message_delta", "delta": stop, "usage": {"output_tokens": output_tokens}}
        )
        yield sse({"type": "message_stop"})

    def _malformed_event(self) -> str:
        if self.protocol == "openai":
            return 'data: {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"content": "\n\n'
        return 'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'

    # -- the wire ----------------------------------------------------------------------

    def _send(self, block: str) -> None:
        data = block.encode()
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.handler.wfile.flush()

    def _drop(self) -> None:
        """Close the connection now, whatever was (not) sent."""
        handler = self.handler
        handler.close_connection = True
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event; Anthropic's events are named after their ``type``."""
    if event is None and isinstance(data, dict) and "type" in data:
        event = str(data["type"])
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: FaultyProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Dropped and abandoned connections are what these tests are about: stay quiet."""


class FaultyProvider:
    """The server: its models, their faults, and the record of every request."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.provider = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(
        self,
        name: str,
        chunks: tuple[str, ...] | str,
        *,
        usage: tuple[int, int] = (11, 7),
        served: str | None = None,
        reject_prefill: bool = False,
    ) -> Model:
        """A model under ``/{name}``; ``chunks``: its answer as stream chunks (a ``str``: one
        chunk per word, each but the first with its leading space, as tokenizers stream)."""
        if isinstance(chunks, str):
            first, *rest = chunks.split(" ")
            chunks = (first, *(" " + word for word in rest))
        model = Model(name, chunks, usage=usage, served=served, reject_prefill=reject_prefill)
        with self._lock:
            self.models[name] = model
        return model

    def record(
        self, at: float, model: str, method: str, route: str, body: Any, fault: Fault | None
    ) -> str:
        with self._lock:
            request_id = f"req_{next(self._ids):04d}"
            self._seen.append(
                Seen(at, model, method, route, body, fault.name if fault else None, request_id)
            )
        return request_id

    def seen(
        self, model: str | None = None, *, chat: bool | None = True, probes: bool | None = None
    ) -> list[Seen]:
        """The requests read so far, oldest first: of ``model`` (or all), chat requests only
        (``chat=None``: every request), with (``None``), without (False) or only (True)
        health probes."""
        with self._lock:
            seen = list(self._seen)
        return [
            s
            for s in seen
            if (model is None or s.model == model)
            and (chat is None or s.chat == chat)
            and (probes is None or s.probe == probes)
        ]

    def calls(self, model: str) -> list[Seen]:
        """The chat requests of ``model`` that are not health probes."""
        return self.seen(model, probes=False)

    def hold(self) -> None:
        """Block a handler thread until the test ends (or ``HOLD_LIMIT``)."""
        self._released.wait(HOLD_LIMIT)

    def start(self) -> FaultyProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release every held connection and stop serving."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
