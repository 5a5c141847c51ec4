"""The faulty provider itself, with plain httpx: the fault tests are only as good as it is."""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from devs.risks.multi_model_failover import ErrorKind, ModelError

from .catalogue import (
    content_filter,
    cut,
    malformed,
    rate_limited,
    refusal,
    reset,
    silence,
    stall,
    unavailable,
)
from .provider import FaultyProvider
from .support import client

ANSWER = "The quick brown fox jumps over the lazy dog."


def events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event."""
    found = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        found.append((name, "\n".join(data)))
    return found


def openai_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


def test_an_openai_stream_is_the_answer_in_chunks_with_usage_when_asked(
    provider: FaultyProvider,
) -> None:
    provider.add("m", ANSWER, usage=(21, 9))
    url = f"{provider.url}/m/v1/chat/completions"
    body = openai_body(True, stream_options={"include_usage": True})
    with httpx.stream("POST", url, json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        text = response.read().decode()
    found = events(text)
    assert found[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in found[:-1]]
    assert all(c["model"] == "m-2025-01-01" for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(p for p in pieces if p) == ANSWER
    assert pieces[1:-1] == [
        "The",
        " quick",
        " brown",
        " fox",
        " jumps",
        " over",
        " the",
        " lazy",
        " dog.",
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}

    with httpx.stream("POST", url, json=openai_body(True)) as response:
        plain = [json.loads(d) for _, d in events(response.read().decode())[:-1]]
    assert all(c["choices"] and "usage" not in c for c in plain)


def test_an_anthropic_stream_is_the_answer_in_named_events(provider: FaultyProvider) -> None:
    provider.add("m", ANSWER, usage=(30, 12))
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", f"{provider.url}/m/v1/messages", json={**body, "stream": True}
    ) as response:
        found = events(response.read().decode())
        request_id = response.headers["request-id"]
    names = [name for name, _ in found]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    data = [json.loads(d) for _, d in found]
    assert all(d["type"] == name for d, name in zip(data, names, strict=True))
    text = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta")
    assert text == ANSWER
    assert data[0]["message"]["usage"]["input_tokens"] == 30
    assert data[-2]["usage"] == {"output_tokens": 12}
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    (seen,) = provider.seen("m")
    assert (seen.route, seen.streamed, seen.fault, seen.request_id) == (
        "/v1/messages",
        True,
        None,
        request_id,
    )


def test_whole_answers_in_both_formats(provider: FaultyProvider) -> None:
    provider.add("m", ANSWER, usage=(3, 4))
    openai = httpx.post(f"{provider.url}/m/v1/chat/completions", json=openai_body(False)).json()
    assert openai["choices"][0]["message"]["content"] == ANSWER
    assert openai["usage"]["prompt_tokens"] == 3
    anthropic = httpx.post(
        f"{provider.url}/m/v1/messages",
        json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert anthropic["content"] == [{"type": "text", "text": ANSWER}]
    assert anthropic["stop_reason"] == "end_turn"
    assert [s.streamed for s in provider.seen("m")] == [False, False]


def test_models_answers_200_during_an_outage_and_faults_follow_their_schedule(
    provider: FaultyProvider,
) -> None:
    model = provider.add("m", ANSWER)
    now = time.monotonic()
    model.fail_between(now - 1, now + 60, unavailable())
    model.fail_next(rate_limited(retry_after=1))
    url = f"{provider.url}/m/v1/chat/completions"
    first = httpx.post(url, json=openai_body(False))
    assert (first.status_code, first.headers["retry-after"]) == (429, "1")
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    second = httpx.post(url, json=openai_body(False))
    assert second.status_code == 503
    assert httpx.get(f"{provider.url}/m/v1/models").status_code == 200
    anthropic = httpx.post(f"{provider.url}/m/v1/messages", json=openai_body(False))
    assert anthropic.json()["error"]["type"] == "overloaded_error"
    assert [(s.method, s.fault) for s in provider.seen("m", chat=None)] == [
        ("POST", "429 retry-after 1"),
        ("POST", "503"),
        ("GET", None),
        ("POST", "503"),
    ]
    assert httpx.get(f"{provider.url}/nobody/v1/models").status_code == 404


def test_a_reset_closes_before_the_status_line(provider: FaultyProvider) -> None:
    provider.add("m", ANSWER).fail_next(reset())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        httpx.post(f"{provider.url}/m/v1/chat/completions", json=openai_body(False))


def test_a_silence_sends_nothing(provider: FaultyProvider) -> None:
    provider.add("m", ANSWER).fail_next(silence())
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{provider.url}/m/v1/chat/completions", json=openai_body(False), timeout=0.3)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_a_cut_or_stalled_stream_sends_its_first_chunks_then_breaks(
    provider: FaultyProvider, route: str
) -> None:
    provider.add("m", ANSWER).fail_next(cut(after=2), stall(after=3))
    url = f"{provider.url}/m{route}"
    received, error = read_raw(url, timeout=5)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert '"The"' in received
    assert '" quick"' in received
    assert '" brown"' not in received
    received, error = read_raw(url, timeout=0.3)
    assert isinstance(error, httpx.ReadTimeout)
    assert '" brown"' in received
    assert '" fox"' not in received


def read_raw(url: str, *, timeout: float) -> tuple[str, Exception | None]:
    """The raw body of a streamed answer as far as it came, and how it ended."""
    received: list[str] = []
    try:
        with httpx.stream("POST", url, json=openai_body(True), timeout=timeout) as response:
            for chunk in response.iter_raw():
                received.append(chunk.decode())
    except httpx.HTTPError as exc:
        return "".join(received), exc
    return "".join(received), None


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_a_malformed_event_sits_among_good_ones(provider: FaultyProvider, route: str) -> None:
    provider.add("m", ANSWER).fail_next(malformed(after=2))
    with httpx.stream("POST", f"{provider.url}/m{route}", json=openai_body(True)) as response:
        found = events(response.read().decode())
    bad = []
    for _, data in found:
        if data == "[DONE]":
            continue
        try:
            json.loads(data)
        except ValueError:
            bad.append(data)
    assert len(bad) == 1


def test_a_prefill_is_continued_or_refused(provider: FaultyProvider) -> None:
    provider.add("open", ANSWER)
    provider.add("strict", ANSWER, reject_prefill=True)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "The quick bro"}]},
    ]
    body = {"model": "x", "max_tokens": 8, "messages": messages}
    continued = httpx.post(f"{provider.url}/open/v1/messages", json=body).json()
    assert continued["content"][0]["text"] == "wn fox jumps over the lazy dog."
    refused = httpx.post(f"{provider.url}/strict/v1/messages", json=body)
    assert refused.status_code == 400
    assert "prefill" in refused.json()["error"]["message"]
    assert provider.seen("strict")[0].fault == "prefill_rejected"


def test_the_record_tells_probes_from_calls(provider: FaultyProvider) -> None:
    provider.add("m", ANSWER)
    url = f"{provider.url}/m/v1/chat/completions"
    httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": "ping"}]})
    httpx.post(url, json=openai_body(False))
    assert [s.probe for s in provider.seen("m")] == [True, False]
    assert len(provider.calls("m")) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_the_package_clients_read_its_answers_and_its_errors(
    provider: FaultyProvider, wire: str
) -> None:
    model = provider.add("m", ANSWER)
    model.fail_next(None, None, content_filter(), refusal())
    async with client(provider, model, wire) as http:
        answer = await http.call("hi")
        assert (answer.text, answer.model) == (ANSWER, "m-2025-01-01")
        async with aclosing(http.stream("hi")) as stream:
            chunks = [chunk async for chunk in stream]
        assert "".join(chunks) == ANSWER
        for _ in range(2):
            with pytest.raises(ModelError) as caught:
                await http.call("hi")
            assert caught.value.kind is ErrorKind.CONTENT_FILTER
