"""Text from the log reaches a terminal escaped: a provider's error message, a maintenance
reason, an operator's name or a model id can hold terminal control sequences (issue #12).

Human-facing output shows them as visible escapes (``\\x1b``); JSON keeps them as JSON escapes
and round-trips the original string; rich markup in the data is printed as written.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devs.risks.multi_model_failover import ErrorKind, HealthState, SQLiteEventStore
from devs.risks.multi_model_failover.adapters.cli.render import visible
from devs.risks.multi_model_failover.core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    StateChanged,
)

RunProcess = Callable[..., subprocess.CompletedProcess[str]]

MODEL = "evil\x1b[31m-model"
CALL = "call\x1b[2J-2"
MESSAGE = "boom \x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eesrever\r\bX\ttab\nnext [red]alert[/red]"
REASON = "rotate \x1b[2J key [red]alert[/red]"
BY = "mallory\x1b]0;pwned\x07"
# What must never reach a terminal raw: ESC, BEL, 8-bit CSI, a bidi override, CR, BS.
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\b")
START = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def _events() -> list[Event]:
    def at(seconds: float) -> datetime:
        return START + timedelta(seconds=seconds)

    server = ErrorKind.SERVER
    return [
        EngineStarted(at=at(0), models=("primary", MODEL)),
        CallStarted(at=at(1), call_id="c1", order=("primary", MODEL)),
        AttemptStarted(at=at(1), call_id="c1", model_id="primary", attempt=1),
        AttemptFailed(
            at=at(2), call_id="c1", model_id="primary", attempt=1, latency=0.5,
            error_kind=server, message=MESSAGE, final=True,
        ),
        Failover(at=at(2), call_id="c1", from_model="primary", to_model=MODEL, reason=server),
        AttemptStarted(at=at(2), call_id="c1", model_id=MODEL, attempt=1),
        AttemptSucceeded(at=at(3), call_id="c1", model_id=MODEL, attempt=1, latency=0.7),
        CallSucceeded(
            at=at(3), call_id="c1", model_id=MODEL, attempts=2, failovers=1, latency=1.5
        ),
        HealthProbe(at=at(4), model_id="primary", ok=False, latency=0.1, message=MESSAGE),
        StateChanged(
            at=at(4), model_id="primary", from_state=HealthState.HEALTHY,
            to_state=HealthState.UNHEALTHY, reason=MESSAGE,
        ),
        Maintenance(at=at(5), model_id=MODEL, on=True, reason=REASON, by=BY),
        CallStarted(at=at(6), call_id=CALL, order=(MODEL,), last_resort=True),
        CallFailed(
            at=at(7), call_id=CALL, reason=MESSAGE, error_kind=server, attempts=1,
            failovers=0, latency=0.2,
        ),
    ]  # fmt: skip


@pytest.fixture
def hostile_log(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.sqlite3"
    with SQLiteEventStore(path) as store:
        for event in _events():
            store.append(event)
    return path


def _assert_clean(text: str) -> None:
    for raw in RAW:
        assert raw not in text, (raw, text)


def _run(run_process: RunProcess, *args: object, **kwargs: object) -> str:
    result = run_process(*args, **kwargs)
    assert result.returncode == 0, result.stderr
    _assert_clean(result.stdout)
    _assert_clean(result.stderr)
    return result.stdout


@pytest.mark.parametrize(
    "args",
    [["timeline"], ["audit"], ["state"], ["metrics"], ["state", "--at", "2024-05-01T03:00:04Z"]],
    ids=["timeline", "audit", "state", "metrics", "state-at"],
)
def test_text_output_shows_control_characters_escaped(
    run_process: RunProcess, hostile_log: Path, args: list[str]
) -> None:
    out = _run(run_process, args[0], hostile_log, *args[1:])
    assert "evil\\x1b[31m-model" in out


def test_the_timeline_shows_each_event_on_one_visible_line(
    run_process: RunProcess, hostile_log: Path
) -> None:
    out = _run(run_process, "timeline", hostile_log)
    assert len(out.splitlines()) == len(_events())
    assert "boom \\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m \\u202eesrever\\r\\x08X\\ttab\\nnext" in out
    assert "[red]alert[/red]" in out
    assert "call\\x1b[2J-2" in out


def test_the_audit_names_the_operator_visibly(run_process: RunProcess, hostile_log: Path) -> None:
    out = _run(run_process, "audit", hostile_log)
    assert "mallory\\x1b]0;pwned\\x07" in out
    assert "rotate \\x1b[2J key [red]alert[/red]" in out


def test_on_a_terminal_markup_in_the_data_is_not_interpreted(
    run_process: RunProcess, hostile_log: Path
) -> None:
    terminal = {"FORCE_COLOR": "1", "COLUMNS": "400", "TTY_COMPATIBLE": "1"}
    for command in ("timeline", "audit", "state"):
        result = run_process(command, hostile_log, env=terminal)
        assert result.returncode == 0, result.stderr
        assert "\x1b[" in result.stdout  # rich's own colours: this is the terminal path
        for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\x9b", "\u202e", "\x1b[31m-model"):
            assert raw not in result.stdout, (command, raw)
        assert "evil\\x1b[31m-model" in result.stdout
    audit = run_process("audit", hostile_log, env=terminal).stdout
    assert "[red]alert[/red]" in audit


@pytest.mark.parametrize(
    "args",
    [
        ["timeline", "--json"],
        ["audit", "--json"],
        ["state", "--json"],
        ["metrics", "--format", "json"],
    ],
    ids=["timeline", "audit", "state", "metrics"],
)
def test_json_keeps_the_original_strings_as_json_escapes(
    run_process: RunProcess, hostile_log: Path, args: list[str]
) -> None:
    out = _run(run_process, args[0], hostile_log, *args[1:])
    documents = [json.loads(line) for line in out.splitlines()]
    assert MODEL in _strings(documents)
    if args[0] == "timeline":
        assert any(d.get("message") == MESSAGE for d in documents)
    if args[0] == "audit":
        assert any(d.get("by") == BY and d.get("reason") == REASON for d in documents)


def _strings(document: object) -> set[str]:
    """Every string in a decoded JSON document, keys included."""
    if isinstance(document, str):
        return {document}
    if isinstance(document, dict):
        return set(document) | _strings(list(document.values()))
    if isinstance(document, list):
        return set().union(*(_strings(item) for item in document))
    return set()


def test_the_html_report_shows_them_escaped(
    run_process: RunProcess, hostile_log: Path, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    _run(run_process, "report", hostile_log, "-o", page)
    html = page.read_text(encoding="utf-8")
    _assert_clean(html)
    assert "evil\\x1b[31m-model" in html
    assert "mallory\\x1b]0;pwned\\x07" in html
    assert "[red]alert[/red]" in html


def test_messages_about_the_log_escape_what_it_names(
    run_process: RunProcess, hostile_log: Path
) -> None:
    result = run_process("timeline", hostile_log, "--model", "nosuch")
    assert result.returncode == 2
    _assert_clean(result.stderr)
    assert "evil\\x1b[31m-model" in result.stderr
    out = _run(
        run_process, "maintenance", "off", MODEL, "--log", hostile_log, "--reason", "ok", "--by", BY
    )
    assert "mallory\\x1b]0;pwned\\x07" in out


def test_the_demo_shows_a_hostile_path_escaped(run_process: RunProcess, tmp_path: Path) -> None:
    log = tmp_path / "demo\x1b]0;pwned\x07.sqlite3"
    out = _run(run_process, "demo", "--log", log)
    assert "demo\\x1b]0;pwned\\x07.sqlite3" in out


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcödé and 日本語", "plain text, ünïcödé and 日本語"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("bell\x07", "bell\\x07"),
        ("c1\x9b", "c1\\x9b"),
        ("del\x7f", "del\\x7f"),
        ("\u202eright-to-left", "\\u202eright-to-left"),
        ("line\nbreak\rreturn\ttab\bback", "line\\nbreak\\rreturn\\ttab\\x08back"),
        ("zero\u200bwidth\u2028sep", "zero\\u200bwidth\\u2028sep"),
        ("non\u00a0breaking space", "non\u00a0breaking space"),
        ("[red]markup[/red] \\x1b", "[red]markup[/red] \\x1b"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown
