"""Human-readable output of the command line: event lines, tables, colour on a terminal.

On a terminal the output is coloured and tables are drawn with ``rich``; anywhere else (a pipe,
a file, a test) it is plain text with aligned columns, so it can be read, diffed and grepped.

Text from a log (a provider's error message, a reason, an operator's name, a model id) may hold
terminal control sequences: every human-facing output passes it through ``visible`` (escapes
shown, never acted on) and every JSON output through ``visible_json``.
"""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, TextIO, TypeAlias

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...core.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    EngineStopped,
    Event,
    Failover,
    HealthProbe,
    Maintenance,
    RetryBudgetExhausted,
    StateChanged,
)
from ...core.health import HealthState
from ...core.projections import AuditEntry, Metrics

TONES: Final = {
    "ok": "green",
    "fail": "bold red",
    "warn": "yellow",
    "state": "bold magenta",
    "operator": "bold cyan",
    "info": "dim",
    "plain": "",
}
STATE_STYLES: Final = {
    HealthState.HEALTHY: "green",
    HealthState.DEGRADED: "yellow",
    HealthState.UNHEALTHY: "bold red",
    HealthState.MAINTENANCE: "cyan",
}


# One event as the timeline shows it: time, call, model, what happened, error kind, delay,
# detail, tone. A plain tuple: a million of them are built for a long timeline, and a
# NamedTuple costs twenty times more to build. Empty columns hold "-".
Line: TypeAlias = tuple[str, str, str, str, str, str, str, str]


_encode_time = msgspec.json.Encoder().encode


def _shown(char: str) -> str:
    # Spaces (U+00A0 and the like) are harmless; every other non-printable is escaped the way
    # Python's repr writes it: \x1b, \x9b, \n, \u202e.
    if char.isprintable() or unicodedata.category(char) == "Zs":
        return char
    return repr(char)[1:-1]


def visible(text: str) -> str:
    r"""``text`` with each character a terminal could act on written as a visible escape.

    C0 and C1 controls, DEL, bidi overrides and other format characters, line separators:
    ``"\x1b[2J"`` prints as ``\x1b[2J``. Backslashes are left as they are.
    """
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(map(_shown, text))


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def visible_json(document: bytes) -> str:
    """Encoded JSON with every non-printable character as a JSON escape: the same JSON.

    msgspec escapes the C0 controls but writes DEL, C1 controls and bidi overrides raw.
    Outside strings compact JSON holds only printable ASCII, so each one is inside a string.
    """
    text = document.decode()
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _json_escape(char) for char in text)


def clock_text(instant: datetime | None) -> str:
    """``2024-05-01 03:12:09.250`` in UTC (milliseconds), or ``-``."""
    if instant is None:
        return "-"
    if instant.tzinfo is UTC:
        # msgspec writes '"2024-05-01T03:12:09.250000Z"' ten times faster than isoformat.
        raw = _encode_time(instant)
        if len(raw) == 29:
            return raw[1:24].decode().replace("T", " ")
        if len(raw) == 22:
            return raw[1:20].decode().replace("T", " ") + ".000"
    return instant.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds")[:23]


def seconds_text(value: float | None) -> str:
    """A duration for people: ``0.042s``, ``1.50s``, ``95.0s``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f}s"
    if value < 60:
        return f"{value:.2f}s"
    return f"{value:.1f}s"


def tokens_text(count: int) -> str:
    """A token count for people: ``12,345``."""
    return f"{count:,}"


# At most this many digits after the point: a cost under half of 1e-8 USD prints as $0.00.
_COST_DECIMALS: Final = 8


def cost_text(usd: float | None) -> str:
    """A cost in USD for people, ``-`` when unknown: ``$12.34``, ``$0.0123``, ``$0.000042``.

    From one dollar up, cents; below, three significant digits (trailing zeros dropped down to
    cents), so a cheap model's cost does not print as ``$0.00``.
    """
    if usd is None:
        return "-"
    if usd >= 1 or usd <= 0 or not math.isfinite(usd):  # a log's float may be anything
        return f"${usd:,.2f}"
    decimals = min(_COST_DECIMALS, 2 - math.floor(math.log10(usd)))
    shown = f"{usd:.{decimals}f}".rstrip("0")
    whole, _, fraction = shown.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def has_usage(m: Metrics) -> bool:
    """Whether the log reported any token usage or cost (the usage columns are shown then)."""
    return bool(m.input_tokens or m.output_tokens) or m.cost is not None


MODEL_HEADERS: Final = (
    "model", "attempts", "ok", "failed", "calls served", "p50", "p95", "mean", "max",
)  # fmt: skip
USAGE_HEADERS: Final = ("input tokens", "output tokens", "cost")


def model_headers(m: Metrics) -> tuple[str, ...]:
    """The headers of ``model_rows(m)``: ``MODEL_HEADERS``, then ``USAGE_HEADERS`` when the
    log reported usage (a log without any prints as it did before usage was recorded)."""
    return MODEL_HEADERS + USAGE_HEADERS if has_usage(m) else MODEL_HEADERS


def model_rows(m: Metrics) -> list[list[str]]:
    """One row per model under ``model_headers(m)`` (the CLI's table and the HTML report)."""
    usage = has_usage(m)
    rows = []
    for model_id, f in sorted(m.by_model.items()):
        row = [
            model_id,
            str(f.attempts),
            str(f.successes),
            str(f.failures),
            str(f.calls_served),
            seconds_text(f.latency_quantile(0.5)),
            seconds_text(f.latency_quantile(0.95)),
            seconds_text(f.latency_mean),
            seconds_text(f.latency_max) if f.latency_count else "-",
        ]
        if usage:
            row += [tokens_text(f.input_tokens), tokens_text(f.output_tokens), cost_text(f.cost)]
        rows.append(row)
    return rows


def usage_totals(m: Metrics) -> list[tuple[str, str]]:
    """The log's usage as (figure, value) lines, none when it reported no usage."""
    if not has_usage(m):
        return []
    return [
        ("input tokens", tokens_text(m.input_tokens)),
        ("output tokens", tokens_text(m.output_tokens)),
        ("cost", cost_text(m.cost)),
    ]


AUDIT_HEADERS: Final = ("time (UTC)", "model", "action", "state", "who", "why")


def audit_rows(entries: Iterable[AuditEntry]) -> list[list[str]]:
    """One row per audit entry under ``AUDIT_HEADERS`` (the CLI's table and the HTML report)."""
    return [
        [
            clock_text(e.at),
            e.model_id,
            e.action.replace("_", " "),
            f"{e.from_state.value} -> {e.to_state.value}",
            e.by or "engine (health)",
            e.reason,
        ]
        for e in entries
    ]


def _took(latency: float) -> str:
    return f"took {seconds_text(latency)}"


def _engine_started(e: EngineStarted) -> Line:
    return (
        clock_text(e.at),
        "-",
        "-",
        "engine started",
        "-",
        "-",
        f"order: {', '.join(e.models)}",
        "info",
    )


def _engine_stopped(e: EngineStopped) -> Line:
    return (clock_text(e.at), "-", "-", "engine stopped", "-", "-", "", "info")


def _call_started(e: CallStarted) -> Line:
    detail = "order: " + " -> ".join(e.order) + (" (last resort)" if e.last_resort else "")
    return (clock_text(e.at), e.call_id, "-", "call started", "-", "-", detail, "info")


def _attempt_started(e: AttemptStarted) -> Line:
    if e.trial:
        what, detail = f"attempt {e.attempt} (trial)", "trial call of an unhealthy model"
        return (clock_text(e.at), e.call_id, e.model_id, what, "-", "-", detail, "warn")
    return (clock_text(e.at), e.call_id, e.model_id, f"attempt {e.attempt}", "-", "-", "", "info")


def _skipped(count: int) -> str:
    return f"skipped {count} malformed stream event(s)" if count else ""


def _attempt_succeeded(e: AttemptSucceeded) -> Line:
    what = f"attempt {e.attempt} ok"
    detail = _skipped(e.skipped)
    return (clock_text(e.at), e.call_id, e.model_id, what, "-", _took(e.latency), detail, "ok")


def _attempt_failed(e: AttemptFailed) -> Line:
    what = f"attempt {e.attempt} failed" + (", gave up" if e.final else "")
    kind = e.error_kind.value
    return (
        clock_text(e.at),
        e.call_id,
        e.model_id,
        what,
        kind,
        _took(e.latency),
        "; ".join(part for part in (e.message, _skipped(e.skipped)) if part),
        "fail",
    )


def _backoff(e: Backoff) -> Line:
    what = f"backoff before attempt {e.attempt + 1}"
    delay = f"wait {seconds_text(e.delay)}"
    detail = f"retry-after {seconds_text(e.retry_after)}" if e.retry_after is not None else ""
    return (clock_text(e.at), e.call_id, e.model_id, what, "-", delay, detail, "warn")


def _retry_budget(e: RetryBudgetExhausted) -> Line:
    detail = "failing over instead of retrying"
    return (clock_text(e.at), e.call_id, e.model_id, "retry budget spent", "-", "-", detail, "warn")


def _failover(e: Failover) -> Line:
    model = f"{e.from_model} -> {e.to_model}"
    return (clock_text(e.at), e.call_id, model, "failover", e.reason.value, "-", "", "warn")


def _call_succeeded(e: CallSucceeded) -> Line:
    detail = f"{e.attempts} attempt(s), {e.failovers} failover(s)"
    return (
        clock_text(e.at),
        e.call_id,
        e.model_id,
        "call succeeded",
        "-",
        _took(e.latency),
        detail,
        "ok",
    )


def _call_failed(e: CallFailed) -> Line:
    detail = f"{e.attempts} attempt(s), {e.failovers} failover(s)"
    return (
        clock_text(e.at),
        e.call_id,
        "-",
        f"call failed ({e.reason})",
        e.error_kind.value,
        _took(e.latency),
        detail,
        "fail",
    )


def _call_cancelled(e: CallCancelled) -> Line:
    return (
        clock_text(e.at),
        e.call_id,
        e.model_id or "-",
        "call cancelled by caller",
        "-",
        _took(e.latency),
        f"{e.attempts} attempt(s)",
        "warn",
    )


def _health_probe(e: HealthProbe) -> Line:
    return (
        clock_text(e.at),
        "-",
        e.model_id,
        "probe ok" if e.ok else "probe failed",
        e.error_kind.value if e.error_kind is not None else "-",
        _took(e.latency),
        e.message,
        "ok" if e.ok else "fail",
    )


def _state_changed(e: StateChanged) -> Line:
    what = f"{e.from_state.value} -> {e.to_state.value}"
    return (clock_text(e.at), "-", e.model_id, what, "-", "-", e.reason, "state")


def _maintenance(e: Maintenance) -> Line:
    by = f" (by {e.by})" if e.by else ""
    what = f"maintenance {'on' if e.on else 'off'}"
    return (clock_text(e.at), "-", e.model_id, what, "-", "-", f"{e.reason}{by}", "operator")


_DESCRIBE: Final[dict[type[Event], Callable[..., Line]]] = {
    EngineStarted: _engine_started,
    EngineStopped: _engine_stopped,
    CallStarted: _call_started,
    AttemptStarted: _attempt_started,
    AttemptSucceeded: _attempt_succeeded,
    AttemptFailed: _attempt_failed,
    Backoff: _backoff,
    RetryBudgetExhausted: _retry_budget,
    Failover: _failover,
    CallSucceeded: _call_succeeded,
    CallFailed: _call_failed,
    CallCancelled: _call_cancelled,
    HealthProbe: _health_probe,
    StateChanged: _state_changed,
    Maintenance: _maintenance,
}


def describe(event: Event) -> Line:
    """The timeline line of ``event``: time, call, model, what happened, error kind, delay."""
    describer = _DESCRIBE.get(type(event))
    if describer is None:  # a type newer than this table: still one readable line
        what = event.type.replace("_", " ")
        return (clock_text(event.at), "-", "-", what, "-", "-", "", "info")
    return describer(event)


_PLAIN = "{}  {:<13} {:<24} {:<28} {:<14} {:<12} {}".format


def plain_line(line: Line) -> str:
    """``line`` as aligned plain text."""
    return _PLAIN(*line[:7]).rstrip()


class Output:
    """Where the command line prints: rich on a terminal, plain text elsewhere."""

    def __init__(self, console: Console | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.console = console or Console(file=self.stream, highlight=False, soft_wrap=True)
        self.rich = self.console.is_terminal

    def text(self, message: str = "", tone: str = "plain") -> None:
        """One line of prose."""
        shown = visible(message)
        if self.rich:
            self.console.print(Text(shown, style=TONES[tone]))
        else:
            self.stream.write(shown + "\n")

    def heading(self, title: str) -> None:
        """A section title."""
        shown = visible(title)
        if self.rich:
            self.console.print(Text(shown, style="bold underline"))
        else:
            self.stream.write(f"\n{shown}\n" if shown else "\n")

    def lines(self, lines: Iterable[Line]) -> int:
        """Print timeline lines; returns how many. Plain text is written in large chunks."""
        if self.rich:
            return self._rich_lines(lines)
        count = 0
        chunk: list[str] = []
        for line in lines:
            chunk.append(visible(plain_line(line)))
            count += 1
            if len(chunk) >= 2_000:
                self.stream.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            self.stream.write("\n".join(chunk) + "\n")
        self.stream.flush()
        return count

    def _rich_lines(self, lines: Iterable[Line]) -> int:
        count = 0
        for line in lines:
            time, call, model, what, kind, delay, detail = map(visible, line[:7])
            tone = line[7]
            text = Text(f"{time}  ", style="dim")
            text.append(f"{call:<13} ", style="blue")
            text.append(f"{model:<24} ", style="bold")
            text.append(f"{what:<28} ", style=TONES[tone])
            text.append(f"{kind:<14} ", style="dim" if kind == "-" else "red")
            text.append(f"{delay:<12} ", style="dim")
            text.append(detail)
            self.console.print(text)
            count += 1
        return count

    def table(
        self,
        title: str,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        styles: Sequence[str] | None = None,
    ) -> None:
        """A table; ``styles`` gives a rich style per row (ignored in plain text)."""
        title = visible(title)
        headers = [visible(header) for header in headers]
        rows = [[visible(cell) for cell in row] for row in rows]
        if self.rich:
            # Text, not markup: a reason like "[maintenance]" must print as written.
            table = Table(title=Text(title), box=box.SIMPLE_HEAD, title_justify="left")
            for header in headers:
                table.add_column(Text(header))
            for index, row in enumerate(rows):
                table.add_row(
                    *(Text(cell) for cell in row), style=styles[index] if styles else None
                )
            self.console.print(table)
            return
        self.stream.write(plain_table(title, headers, rows))


def plain_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as aligned plain text, under its title."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [title] if title else []
    out.append(fmt(headers))
    out.append(fmt(["-" * w for w in widths]))
    out.extend(fmt(row) for row in rows)
    return "\n".join(out) + "\n\n"
