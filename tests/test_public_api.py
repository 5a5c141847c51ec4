"""The public surface: ``__all__`` is complete and importable, the library is quiet by default,
a consumer's code (and the README's orchestrator snippets) type-checks under ``mypy --strict``
while its mistakes do not, and per-call ``params`` reach the client as given, for that call."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import devs.risks.multi_model_failover as package
from devs.risks.multi_model_failover import ModelResponse, MultiModelFailover, Usage, replay

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / "tests" / "typing" / "consumer.py"
REJECTED = ROOT / "tests" / "typing" / "rejected.py"
README = ROOT / "README.md"
ORCHESTRATOR_SECTION = "## Use it from an orchestrator"
# The snippets from here to the end of the section are whole modules: imports and definitions.
FIRST_CHECKED_SNIPPET = "### Tools, structured output and what it cost"

# Every name DESIGN.md's public API section lists.
DESIGN_NAMES = {
    "ModelClient", "MultiModelFailover", "replay", "SQLiteEventStore", "ConfigError",
    "ModelError", "AllModelsFailedError", "ErrorKind", "HealthState", "RetryPolicy",
    "HealthPolicy", "Metrics", "ModelResponse", "Snapshot", "DeadlineExceededError",
    "SyncMultiModelFailover", "Prompt", "Params", "Price", "ToolCall", "Usage",
}  # fmt: skip


def test_every_design_name_is_exported() -> None:
    assert set(package.__all__) >= DESIGN_NAMES


def test_every_entry_of_all_is_importable() -> None:
    fresh = importlib.import_module("devs.risks.multi_model_failover")
    for name in package.__all__:
        assert getattr(fresh, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from devs.risks.multi_model_failover import *", namespace)  # noqa: S102
    assert set(package.__all__) <= set(namespace)


def test_all_is_complete_and_has_no_duplicates() -> None:
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(package.__all__)
    assert len(package.__all__) == len(set(package.__all__))


def test_public_names_have_docstrings() -> None:
    missing = [name for name in package.__all__ if not getattr(package, name).__doc__]
    assert missing == []


def test_the_error_tree_matches_the_design() -> None:
    assert issubclass(package.AllModelsFailedError, package.ModelError)
    assert issubclass(package.DeadlineExceededError, package.AllModelsFailedError)
    assert issubclass(package.DeadlineExceededError, TimeoutError)
    assert issubclass(package.ConfigError, ValueError)
    assert issubclass(package.ModelError, Exception)


QUIET_SCRIPT = """
import anyio
from devs.risks.multi_model_failover import ModelError, MultiModelFailover

class Down:
    model_id = "primary"
    async def call(self, prompt):
        raise ModelError("down", kind="server")
    async def health_check(self):
        return False

class Up:
    model_id = "secondary"
    async def call(self, prompt):
        return "ok"
    async def health_check(self):
        return True

async def main():
    fo = MultiModelFailover([Down(), Up()], {"max_attempts": 1})
    assert await fo.call("hi") == "ok"
    await fo.check_health()
    await fo.set_maintenance("secondary", True, reason="quiet?")
    await fo.aclose()
    print("done")

anyio.run(main)
"""


def test_the_library_is_silent_until_the_application_enables_logging() -> None:
    # A fresh interpreter: loguru's default stderr handler is installed there.
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", QUIET_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr == ""


def readme_snippets() -> list[str]:
    """The README's checked orchestrator snippets, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(ORCHESTRATOR_SECTION) :]
    section = section[: section.index("\n## ", len(ORCHESTRATOR_SECTION))]
    checked = section[section.index(FIRST_CHECKED_SNIPPET) :]
    return re.findall(r"```python\n(.*?)```", checked, flags=re.DOTALL)


@pytest.fixture(scope="module")
def snippet_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("readme")
    files = []
    for number, code in enumerate(readme_snippets(), start=1):
        path = folder / f"readme_snippet_{number}.py"
        path.write_text(code, encoding="utf-8")
        files.append(path)
    return files


@pytest.fixture(scope="module")
def mypy_errors(snippet_files: list[Path]) -> dict[str, list[tuple[int, str]]]:
    """``mypy --strict`` on the consumer, its mistakes and the README's snippets, run once:
    the errors of each file by name, as (line, message)."""
    # About a second with a warm cache, a few without: cheap enough for every run.
    files = [CONSUMER, REJECTED, *snippet_files]
    result = subprocess.run(  # noqa: S603 - our own interpreter, tool and files
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: mypy itself failed
    errors: dict[str, list[tuple[int, str]]] = {path.name: [] for path in files}
    for line in result.stdout.splitlines():
        found = re.match(r"(.+?):(\d+): error: (.*)", line)
        if found:
            errors[Path(found[1]).name].append((int(found[2]), found[3]))
    return errors


def test_a_consumer_type_checks_under_mypy_strict(
    mypy_errors: dict[str, list[tuple[int, str]]],
) -> None:
    assert mypy_errors[CONSUMER.name] == []


def test_the_readme_orchestrator_snippets_type_check_and_import(
    mypy_errors: dict[str, list[tuple[int, str]]], snippet_files: list[Path]
) -> None:
    assert len(snippet_files) >= 4
    for path in snippet_files:
        assert mypy_errors[path.name] == [], path.read_text(encoding="utf-8")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_mistakes_of_a_consumer_fail_type_checking(
    mypy_errors: dict[str, list[tuple[int, str]]],
) -> None:
    lines = REJECTED.read_text(encoding="utf-8").splitlines()
    expected = {
        number: line.split("# expect: ", 1)[1]
        for number, line in enumerate(lines, start=1)
        if "# expect: " in line
    }
    got: dict[int, list[str]] = {}
    for number, message in mypy_errors[REJECTED.name]:
        got.setdefault(number, []).append(message)
    assert set(got) == set(expected), got
    for number, text in expected.items():
        assert any(text in message for message in got[number]), (lines[number - 1], got[number])
    everything = " ".join(message for messages in got.values() for message in messages)
    assert 'Unexpected keyword argument "evnt_store" for "from_config"' in everything


# -- the README's snippets, run against local clients -------------------------------------------


def load_snippet(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snippet_defining(files: list[Path], name: str) -> types.ModuleType:
    for path in files:
        if f"def {name}(" in path.read_text(encoding="utf-8"):
            return load_snippet(path)
    raise AssertionError(f"no README snippet defines {name}()")


class ToolUser:
    """Asks for the weather tool once, then answers with the tool's result."""

    model_id = "tool-user"

    def __init__(self) -> None:
        self.prompts: list[list[dict[str, Any]]] = []
        self.params: list[Mapping[str, Any] | None] = []

    async def call(self, prompt: Any, params: Mapping[str, Any] | None = None) -> ModelResponse:
        self.prompts.append([dict(m) for m in prompt])
        self.params.append(params)
        last = prompt[-1]
        if last["role"] == "tool":
            return ModelResponse(text=f"It is {last['content']}.", model="m")
        ask = package.ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')
        return ModelResponse(text="", model="m", finish_reason="tool_calls", tool_calls=(ask,))

    async def health_check(self) -> bool:
        return True


class JsonAnswer:
    """Answers every call with ``text``, recording the params."""

    model_id = "json"

    def __init__(self, text: str) -> None:
        self.text = text
        self.params: list[Mapping[str, Any]] = []

    async def call(self, prompt: Any, params: Mapping[str, Any] | None = None) -> ModelResponse:
        self.params.append(params or {})
        return ModelResponse(text=self.text, model="m", usage=Usage(input_tokens=5))

    async def health_check(self) -> bool:
        return True


def readme_answer(prompt: Any, params: Mapping[str, Any] | None = None) -> ModelResponse:
    """The ``callable`` client the README's sync snippet is run with."""
    return ModelResponse(
        text=f"answer to {prompt}", model="local", usage=Usage(input_tokens=7, output_tokens=3)
    )


@pytest.mark.anyio
async def test_the_readme_tool_loop_runs(snippet_files: list[Path]) -> None:
    agent_turn = snippet_defining(snippet_files, "agent_turn").agent_turn
    client = ToolUser()
    fo = MultiModelFailover([client])
    try:
        assert await agent_turn(fo, "Weather in Paris?") == "It is 18 C in Paris."
    finally:
        await fo.aclose()
    assert [p["tools"][0]["function"]["name"] for p in client.params if p] == ["get_weather"] * 2
    assistant, tool = client.prompts[1][1:]
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert tool == {"role": "tool", "tool_call_id": "call-1", "content": "18 C in Paris"}


@pytest.mark.anyio
async def test_the_readme_structured_output_runs(snippet_files: list[Path]) -> None:
    triage = snippet_defining(snippet_files, "triage").triage
    client = JsonAnswer('{"severity": "high", "summary": "db down"}')
    fo = MultiModelFailover([client])
    try:
        answer = await triage(fo, "the database is down")
        assert answer == {"severity": "high", "summary": "db down"}
    finally:
        await fo.aclose()
    assert client.params[0]["response_format"]["json_schema"]["name"] == "triage"


def test_the_readme_sync_snippet_runs(
    snippet_files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    summarise = snippet_defining(snippet_files, "summarise").summarise
    target = f"{__name__}:readme_answer"
    settings = {"multi_model_failover": {"clients": [{"id": "local", "kind": "callable",
                                                       "target": target}]}}  # fmt: skip
    summarise(settings, "the outage")
    printed = capsys.readouterr().out
    assert "answer to the outage" in printed
    assert "answer to Write the post-mortem" in printed


# -- per-call params through the facade --------------------------------------------------------


class OptionsClient:
    """Records each call's params; reports usage."""

    def __init__(self, model_id: str, *, fail: bool = False) -> None:
        self.model_id = model_id
        self.fail = fail
        self.seen: list[Mapping[str, Any] | None] = []

    async def call(self, prompt: str, params: Mapping[str, Any] | None = None) -> ModelResponse:
        self.seen.append(params)
        if self.fail:
            raise package.ModelError("down", kind="server")
        return ModelResponse(
            text=prompt, model=self.model_id, usage=Usage(input_tokens=100, output_tokens=10)
        )

    async def health_check(self) -> bool:
        return True


class PlainClient:
    """Takes no params at all."""

    model_id = "plain"

    async def call(self, prompt: str) -> str:
        return f"plain: {prompt}"

    async def health_check(self) -> bool:
        return True


@pytest.mark.anyio
async def test_params_reach_every_client_tried_for_that_call_only() -> None:
    down, up = OptionsClient("down", fail=True), OptionsClient("up")
    fo = MultiModelFailover([down, up], {"max_attempts": 1})
    try:
        given = {"temperature": 0, "tools": [{"type": "function"}]}
        outcome = await fo.call_with_outcome("hi", params=given)
        assert outcome.model_id == "up"
        given["temperature"] = 1  # the caller's dict changing afterwards changes nothing
        assert down.seen == up.seen == [{"temperature": 0, "tools": [{"type": "function"}]}]
        assert (await fo.call("again")).text == "again"
        assert up.seen[-1] is None  # nothing leaks into the next call
        await fo.call("empty", params={})
        assert up.seen[-1] is None
    finally:
        await fo.aclose()


@pytest.mark.anyio
async def test_params_reach_a_stream_too() -> None:
    client = OptionsClient("only")
    fo = MultiModelFailover([client])
    try:
        async with fo.stream("hi", params={"max_tokens": 5}) as stream:
            assert [chunk async for chunk in stream] == ["hi"]
        assert client.seen == [{"max_tokens": 5}]
    finally:
        await fo.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "named"),
    [([("temperature", 0)], "got list"), ("temperature=0", "got str"), ({0: "x"}, "int")],
)
async def test_bad_params_are_a_type_error_naming_the_type_before_any_event(
    params: Any, named: str
) -> None:
    fo = MultiModelFailover([OptionsClient("only")])
    try:
        with pytest.raises(TypeError, match=named):
            await fo.call("hi", params=params)
        with pytest.raises(TypeError, match=named):
            await fo.call_with_outcome("hi", params=params)
        with pytest.raises(TypeError, match=named):
            fo.stream("hi", params=params)
        assert fo.metrics().calls == 0
    finally:
        await fo.aclose()


@pytest.mark.anyio
async def test_a_client_that_takes_no_params_fails_the_attempt_as_a_bad_request() -> None:
    fo = MultiModelFailover([PlainClient()])
    try:
        assert await fo.call("hi") == "plain: hi"
        with pytest.raises(package.ModelError) as caught:
            await fo.call("hi", params={"temperature": 0})
        assert caught.value.kind is package.ErrorKind.BAD_REQUEST
        assert "temperature" in str(caught.value)
    finally:
        await fo.aclose()


@pytest.mark.anyio
async def test_prices_give_a_cost_and_an_unknown_model_id_is_named() -> None:
    with pytest.raises(ValueError, match="nope"):
        MultiModelFailover([OptionsClient("only")], prices={"nope": {"input": 1, "output": 1}})
    fo = MultiModelFailover([OptionsClient("only")], prices={"only": {"input": 2, "output": 10}})
    try:
        await fo.call("hi")
        metrics = fo.metrics()
    finally:
        await fo.aclose()
    assert metrics.by_model["only"].cost == pytest.approx((100 * 2 + 10 * 10) / 1e6)
    assert replay(fo.event_store).metrics == metrics
