"""``failover whatif``: the recorded calls run again under another policy, side by side.

The policy file is a configuration document (the schema of ``config/risks.yaml``, with or
without its ``multi_model_failover`` key) of which only these keys matter: ``retry_policy``
and ``health_policy`` (each key given replaces the recorded one; ``error_actions`` entries
are merged over the recorded ones), ``health_check_interval`` (probes then follow the engine's
own schedule) and ``clients`` (ids only: those listed are tried first, in that order, and the
others keep their recorded order). The other keys of a configuration (``event_log``,
``durability``, a client's ``kind``, ``model``...) are accepted and play no part. A key the
schema does not know is an error naming it.

The replay itself is ``core.whatif``: calibration first (the recorded policy must reproduce
the log), then the what-if. Output: a table, ``--format json`` (``recorded``, ``what_if``,
``calibration``, ``inferred`` and more) or ``--format html`` (a self-contained page with both
health timelines, one above the other, drawn as the incident report draws them). A calibration
that fails prints the report (its first lines say so) and exits 1.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import html
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec

from ...core.errors import ConfigError
from ...core.events import Event
from ...core.projections import Snapshot
from ...core.whatif import (
    CalibrationError,
    Change,
    MaintenanceWindow,
    Side,
    Timeline,
    WhatIf,
    WhatIfReport,
    what_if,
)
from ...core.whatif.change import merged_retry
from ...storage import GroupCommitStore
from ...storage.archive import records
from ..config import ROOT_KEY, ClientConfig, FailoverConfig, read_document
from .archived import live_first
from .queries import EventFilter, read_events, scalar
from .render import Output, clock_text, cost_text, seconds_text, tokens_text, visible, visible_json
from .report import Incident, health_svg
from .timeexpr import TimeExpressionError, parse_time

# Keys of the configuration that a what-if uses; the rest of the schema is accepted, unused.
_POLICY_KEYS: Final = ("retry_policy", "health_policy", "health_check_interval", "clients")
# How long after ``--until`` the log is read: the window's last calls end within their budget.
_MARGIN: Final = 60.0
LISTED: Final = 20


class WhatIfInputError(ValueError):
    """A policy file, a ``--maintenance`` or ``--without`` the command cannot use (exit 2)."""


class WhatIfFormat(enum.StrEnum):
    """Output formats of ``whatif``."""

    TABLE = "table"
    JSON = "json"
    HTML = "html"


# -- the inputs ----------------------------------------------------------------------------


def load_policy(path: Path) -> dict[str, Any]:
    """The policy keys of the document at ``path`` (see the module docstring);
    ``WhatIfInputError`` naming the file and the key when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WhatIfInputError(f"--policy: cannot read {path}: {exc}") from None
    try:
        document = read_document(text, source=str(path))
    except ConfigError as exc:
        raise WhatIfInputError(f"--policy: {exc}") from None
    if document is None:
        document = {}  # an empty file: the recorded policy
    if not isinstance(document, Mapping):
        raise WhatIfInputError(f"--policy: {path} must hold a mapping of policy keys")
    section = document.get(ROOT_KEY, document) if set(document) <= {ROOT_KEY} else document
    if not isinstance(section, Mapping):
        raise WhatIfInputError(f"--policy: {path}: {ROOT_KEY} must be a mapping")
    known = set(FailoverConfig.__struct_fields__)
    unknown = sorted(str(k) for k in section if k not in known)
    if unknown:
        raise WhatIfInputError(
            f"--policy: {path}: unknown key(s) {', '.join(unknown)} "
            f"(a what-if uses {', '.join(_POLICY_KEYS)})"
        )
    return {key: section[key] for key in _POLICY_KEYS if key in section}


def _client_ids(path: Path, clients: object) -> tuple[str, ...]:
    if not isinstance(clients, list):
        raise WhatIfInputError(f"--policy: {path}: clients must be a list of {{id: ...}}")
    ids = []
    fields = set(ClientConfig.__struct_fields__)
    for index, client in enumerate(clients):
        if not isinstance(client, Mapping) or not isinstance(client.get("id"), str):
            raise WhatIfInputError(f"--policy: {path}: clients[{index}] needs an id")
        unknown = sorted(str(k) for k in client if k not in fields)
        if unknown:
            raise WhatIfInputError(
                f"--policy: {path}: clients[{index}]: unknown key(s) {', '.join(unknown)}"
            )
        ids.append(client["id"])
    return tuple(ids)


def build_change(
    policy: Path | None,
    maintenance: Sequence[str],
    without: Sequence[str],
    *,
    now: datetime | None = None,
) -> Change:
    """The ``Change`` the command line asks for; ``WhatIfInputError`` naming what is wrong."""
    keys = load_policy(policy) if policy is not None else {}
    order = _client_ids(policy, keys["clients"]) if policy is not None and "clients" in keys else ()
    for name in ("retry_policy", "health_policy"):
        if not isinstance(keys.get(name, {}), Mapping):
            raise WhatIfInputError(f"--policy: {policy}: {name} must be a mapping")
    windows = tuple(parse_maintenance(text, now=now) for text in maintenance)
    try:
        return Change(
            retry_policy=dict(keys.get("retry_policy", {})),
            health_policy=dict(keys.get("health_policy", {})),
            health_check_interval=keys.get("health_check_interval"),
            order=order,
            without=tuple(without),
            maintenance=windows,
        )
    except (TypeError, ValueError) as exc:
        where = f"--policy: {policy}: " if policy is not None else ""
        raise WhatIfInputError(f"{where}{exc}") from None


def parse_maintenance(text: str, *, now: datetime | None = None) -> MaintenanceWindow:
    """``MODEL@WHEN`` (maintenance from then on) or ``MODEL@WHEN-WHEN``. A time may itself hold
    dashes (``2024-05-01T03:12``, ``-15m``): the whole is read as one time first, then split at
    the first dash that leaves two times. A model id may hold ``@``: the time follows the
    last one."""
    model, at, when = text.rpartition("@")
    if not at or not model or not when:
        raise WhatIfInputError(
            f"--maintenance {text!r}: expected MODEL@WHEN or MODEL@WHEN-WHEN (UTC times)"
        )
    with contextlib.suppress(TimeExpressionError):
        return MaintenanceWindow(model_id=model, start=parse_time(when, now=now))
    for index, char in enumerate(when):
        if char != "-" or index == 0:
            continue
        try:
            start = parse_time(when[:index], now=now)
            end = parse_time(when[index + 1 :], now=now)
        except TimeExpressionError:
            continue
        try:
            return MaintenanceWindow(model_id=model, start=start, end=end)
        except ValueError as exc:
            raise WhatIfInputError(f"--maintenance {text!r}: {exc}") from None
    raise WhatIfInputError(
        f"--maintenance {text!r}: {when!r} is not a time or a range of two times "
        "(ISO-8601, a clock time, -15m, now)"
    )


# -- the log -------------------------------------------------------------------------------


def recorded_span(
    store: GroupCommitStore, since: datetime | None, until: datetime | None
) -> tuple[Snapshot, Iterator[Event]]:
    """The fold of the log before the engine start in force at ``since`` (the first one
    without ``since``), and the events from that start on (up to a margin past ``until``)."""
    upto = store.last_seq()
    start = None
    if since is not None:
        start = scalar(
            store,
            "SELECT max(seq) FROM events WHERE type = 'engine_started' AND at <= ? AND seq <= ?",
            (store.at_param(since), upto),
        )
    if start is None:
        _refuse_archived_start(store, since)
        start = scalar(
            store,
            "SELECT min(seq) FROM events WHERE type = 'engine_started' AND seq <= ?",
            (upto,),
        )
    if start is None:
        raise WhatIfInputError(
            f"{store.location} holds no engine_started event: the recorded configuration "
            "(models and policies) is unknown, nothing can be replayed"
        )
    initial = store.snapshots.load(int(start) - 1)[0]
    end = None if until is None else until + timedelta(seconds=_horizon(store, int(start), upto))
    events = read_events(store, EventFilter(until=end, upto=upto), after=int(start) - 1)
    return initial, events


def _refuse_archived_start(store: GroupCommitStore, since: datetime | None) -> None:
    """``WhatIfInputError`` naming the archive files when the engine start in force at
    ``since`` was archived (the live log holds none before it), or, without ``since``, when
    the live log holds no engine start at all: the live log alone cannot replay those calls."""
    found = tuple(records(store))
    archived = [r for r in found if r.first_seq < live_first(store, found)]
    if not archived:
        return
    if since is None and scalar(store, "SELECT 1 FROM events WHERE type = 'engine_started'"):
        return  # the replay starts at the live log's first engine start
    paths = ", ".join(dict.fromkeys(r.path for r in archived))
    raise WhatIfInputError(
        f"{store.location}: the engine start in force at "
        f"{clock_text(since) if since is not None else 'its first call'} is archived "
        f"(in {paths}); whatif replays one file: run it on the archive for the calls it holds, "
        "or give --since after an engine start in the live log"
    )


def _horizon(store: GroupCommitStore, start: int, upto: int) -> float:
    """Seconds past ``--until`` within which the window's calls end: the longest call
    budget any engine of the span recorded, with a margin."""
    budget = 60.0
    starts = read_events(store, EventFilter(types=("engine_started",), upto=upto), after=start - 1)
    for event in starts:
        with contextlib.suppress(ValueError):
            budget = max(budget, merged_retry(getattr(event, "retry_policy", {}), {}).call_budget)
    return budget + _MARGIN


def run_whatif(
    store: GroupCommitStore,
    change: Change,
    *,
    since: datetime | None,
    until: datetime | None,
    output_format: WhatIfFormat,
    out: Output,
) -> int:
    """Replay, print in ``output_format``; the exit code (1: calibration failed)."""
    initial, events = recorded_span(store, since, until)
    try:
        result = _replay(events, change, initial, since, until)
    except CalibrationError as exc:
        result = exc.result
    except ValueError as exc:
        raise WhatIfInputError(str(exc)) from None
    title = f"What if: {store.location}"
    if output_format is WhatIfFormat.JSON:
        out.stream.write(visible_json(msgspec.json.encode(result.report)) + "\n")
    elif output_format is WhatIfFormat.HTML:
        out.stream.write(render_html(result, title))
    else:
        print_report(out, result.report, title)
    return 0 if result.report.calibration.ok else 1


def _replay(
    events: Iterator[Event],
    change: Change,
    initial: Snapshot,
    since: datetime | None,
    until: datetime | None,
) -> WhatIf:
    # The replay makes millions of objects that live until it ends: the collector's passes
    # over them would take as long as the replay itself. This command is the application: it
    # pauses the collector for the run (the library leaves that choice to its caller).
    paused = gc.isenabled()
    gc.disable()
    try:
        return anyio.run(lambda: what_if(events, change, initial=initial, since=since, until=until))
    finally:
        if paused:
            gc.enable()


# -- the table -----------------------------------------------------------------------------


def _count(value: int | None) -> str:
    return "-" if value is None else tokens_text(value)


def _delta(before: float | None, after: float | None, *, seconds: bool = False) -> str:
    if before is None or after is None or before == after:
        return "" if before == after else "-"
    diff = after - before
    if seconds and abs(diff) < 5e-4:
        return ""  # under what seconds_text shows
    sign = "+" if diff > 0 else "-"
    if seconds:
        return f"{sign}{seconds_text(abs(diff))}"
    if before:
        return f"{sign}{tokens_text(int(abs(diff)))} ({diff / before:+.0%})"
    return f"{sign}{tokens_text(int(abs(diff)))}"


def side_rows(recorded: Side, what_if: Side) -> list[list[str]]:
    """The figures of both sides, one row each: name, recorded, what-if, change."""
    rows: list[list[str]] = []

    def count(name: str, attribute: str) -> None:
        before, after = getattr(recorded, attribute), getattr(what_if, attribute)
        rows.append([name, _count(before), _count(after), _delta(before, after)])

    def duration(name: str, before: float | None, after: float | None) -> None:
        rows.append(
            [name, seconds_text(before), seconds_text(after), _delta(before, after, seconds=True)]
        )

    count("calls", "calls")
    count("succeeded", "calls_succeeded")
    count("failed", "calls_failed")
    count("cancelled", "calls_cancelled")
    count("attempts", "attempts")
    count("failed attempts", "attempt_failures")
    count("retries", "retries")
    count("failovers", "failovers")
    count("backoffs", "backoffs")
    duration("backoff time", recorded.backoff_seconds, what_if.backoff_seconds)
    count("retries refused by the budget", "retry_budget_exhausted")
    duration("latency p50", recorded.latency.p50, what_if.latency.p50)
    duration("latency p95", recorded.latency.p95, what_if.latency.p95)
    duration("latency max", recorded.latency.max, what_if.latency.max)
    if recorded.input_tokens is not None or what_if.input_tokens is not None:
        count("input tokens", "input_tokens")
        count("output tokens", "output_tokens")
    if recorded.cost is not None or what_if.cost is not None:
        rows.append(["cost", cost_text(recorded.cost), cost_text(what_if.cost), ""])
    return rows


def model_rows(recorded: Side, what_if: Side) -> list[list[str]]:
    """Per model: the load (attempts) and what came of it, recorded -> what-if."""
    rows = []
    for model in sorted(set(recorded.by_model) | set(what_if.by_model)):
        before = recorded.by_model.get(model)
        after = what_if.by_model.get(model)
        cells = [model]
        for attribute in ("attempts", "successes", "failures", "calls_served"):
            old = getattr(before, attribute) if before is not None else 0
            new = getattr(after, attribute) if after is not None else 0
            cells.append(
                f"{tokens_text(old)} -> {tokens_text(new)}" if old != new else tokens_text(old)
            )
        old_cost = before.cost if before is not None else None
        new_cost = after.cost if after is not None else None
        cells.append(
            cost_text(old_cost)
            if old_cost == new_cost
            else f"{cost_text(old_cost)} -> {cost_text(new_cost)}"
        )
        rows.append(cells)
    return rows


def calibration_lines(report: WhatIfReport) -> list[str]:
    """What the calibration found, first line first."""
    calibration = report.calibration
    if calibration.ok:
        return [
            f"calibration ok: the recorded policy, replayed, reproduces all {calibration.calls} "
            "call(s) of the window (attempts, failovers, outcomes)"
        ]
    lines = [
        f"calibration FAILED: {calibration.mismatched} of {calibration.calls} call(s) came out "
        "otherwise when the recorded policy was replayed; the what-if below cannot be trusted"
    ]
    for mismatch in calibration.mismatches[:LISTED]:
        lines.append(f"  call {mismatch.call_id} at {clock_text(mismatch.at)}")
        lines.append(f"    recorded: {mismatch.recorded}")
        lines.append(f"    replayed: {mismatch.replayed}")
    return lines


def change_text(change: Change) -> str:
    """The what-if in one line."""
    parts = [f"retry_policy {k}={v}" for k, v in change.retry_policy.items()]
    parts += [f"health_policy {k}={v}" for k, v in change.health_policy.items()]
    if change.health_check_interval is not None:
        parts.append(f"probes every {change.health_check_interval:g}s")
    if change.order:
        parts.append(f"order {', '.join(change.order)} first")
    parts += [f"without {m}" for m in change.without]
    for window in change.maintenance:
        end = f" to {clock_text(window.end)}" if window.end is not None else " on"
        parts.append(f"{window.model_id} in maintenance from {clock_text(window.start)}{end}")
    return "; ".join(parts) if parts else "nothing (the recorded policy)"


def _window(report: WhatIfReport) -> str:
    since = clock_text(report.since) if report.since is not None else "the engine start"
    until = clock_text(report.until) if report.until is not None else "the end of the log"
    return f"calls from {since} to {until} (replayed from the engine start at " + (
        f"{clock_text(report.replayed_from)})"
    )


def print_report(out: Output, report: WhatIfReport, title: str) -> None:
    """The table form: calibration, the two sides, per model, changed calls, inference."""
    for index, line in enumerate(calibration_lines(report)):
        out.text(line, "fail" if not report.calibration.ok and index == 0 else "ok")
    out.heading(title)
    out.text(f"window: {_window(report)}")
    out.text(f"what if: {change_text(report.change)}")
    out.table(
        "recorded and what-if",
        ["", "recorded", "what-if", "change"],
        side_rows(report.recorded, report.what_if),
    )
    out.table(
        "per model (the load on each provider)",
        ["model", "attempts", "successes", "failures", "calls served", "cost"],
        model_rows(report.recorded, report.what_if),
    )
    out.text(
        f"{report.changed_calls} call(s) change outcome; {report.served_elsewhere} succeed "
        "either way but are served by another model"
    )
    if report.changed:
        out.table(
            "calls whose outcome changes",
            ["time (UTC)", "call", "recorded", "what-if"],
            [[clock_text(c.at), c.call_id, c.recorded, c.what_if] for c in report.changed],
        )
    inferred = report.inferred
    out.text(
        f"inferred: {inferred.answers} of {inferred.of} answers (attempts {inferred.attempts}, "
        f"probes {inferred.probes}) came from the nearest observation, not from the log at "
        f"that moment; {inferred.backoff_draws} backoff draw(s) and {inferred.retry_after} "
        "Retry-After hint(s) behind backoffs inferred"
    )


# -- the HTML page -------------------------------------------------------------------------

_CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 24px 32px; background: #fbfbfd; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #5b6475; margin: 0 0 12px; }
.ok { color: #1f7a45; font-weight: 600; } .bad { color: #c23030; font-weight: 600; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 8px; }
th, td { border: 1px solid #e1e4ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f8; font-weight: 600; }
.panel { background: #fff; border: 1px solid #e1e4ec; border-radius: 8px; padding: 10px;
         overflow-x: auto; margin-bottom: 12px; }
svg.health text { font-size: 12px; fill: #1d2330; } svg.health .label { font-weight: 600; }
svg.health .tick { stroke: #d5d9e3; stroke-width: 1; } svg.health .tick-label { fill: #5b6475; }
svg.health .failover-mark { fill: #1d2330; stroke: #fff; stroke-width: 0.8; }
svg.health .maintenance-mark { fill: #5b6fd6; stroke: #fff; stroke-width: 0.8; }
pre { background: #fff; border: 1px solid #e1e4ec; padding: 8px; white-space: pre-wrap; }
"""


def _h(text: str) -> str:
    return html.escape(visible(text))


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _incident(timeline: Timeline, start: datetime, end: datetime, models: list[str]) -> Incident:
    return Incident(
        start=start,
        end=end,
        models=models,
        initial=dict(timeline.initial),
        changes={m: list(c) for m, c in timeline.changes.items()},
        failovers=list(timeline.failovers),
        maintenance=list(timeline.maintenance),
    )


def _span(result: WhatIf) -> tuple[datetime, datetime]:
    report = result.report
    seen = [
        at
        for timeline in (result.recorded, result.what_if)
        for at in (
            *(f.at for f in timeline.failovers),
            *(m.at for m in timeline.maintenance),
            *(at for changes in timeline.changes.values() for at, _ in changes),
        )
    ]
    calls = [at for at in (report.first_call, report.last_call) if at is not None]
    start = report.since or min([*seen, *calls], default=report.replayed_from)
    end = report.until or max([*seen, *calls], default=start + timedelta(minutes=1))
    return start, max(end, start + timedelta(seconds=1))


def render_html(result: WhatIf, title: str) -> str:
    """A self-contained page: calibration, the two timelines one above the other, figures."""
    report = result.report
    start, end = _span(result)
    models = sorted(
        {
            *result.recorded.initial,
            *result.what_if.initial,
            *result.recorded.changes,
            *result.what_if.changes,
            *report.recorded.by_model,
            *report.what_if.by_model,
        }
    )
    calibration = calibration_lines(report)
    tone = "ok" if report.calibration.ok else "bad"
    details = "\n".join(calibration[1:])
    inferred = report.inferred
    sections = [
        f"<h1>{_h(title)}</h1>",
        f'<p class="{tone}">{_h(calibration[0])}</p>',
        f"<pre>{_h(details)}</pre>" if details else "",
        f'<p class="sub">{_h(_window(report))}<br>what if: {_h(change_text(report.change))}</p>',
        "<h2>Recorded: health of each model over time</h2>",
        f'<div class="panel">{health_svg(_incident(result.recorded, start, end, models))}</div>',
        "<h2>What if: health of each model over time</h2>",
        f'<div class="panel">{health_svg(_incident(result.what_if, start, end, models))}</div>',
        "<h2>Recorded and what-if</h2>",
        _html_table(
            ["", "recorded", "what-if", "change"], side_rows(report.recorded, report.what_if)
        ),
        "<h2>Per model (the load on each provider)</h2>",
        _html_table(
            ["model", "attempts", "successes", "failures", "calls served", "cost"],
            model_rows(report.recorded, report.what_if),
        ),
        f"<h2>Calls whose outcome changes ({report.changed_calls})</h2>",
        _html_table(
            ["time (UTC)", "call", "recorded", "what-if"],
            [[clock_text(c.at), c.call_id, c.recorded, c.what_if] for c in report.changed],
        ),
        "<h2>Inference</h2>",
        f"<p>{inferred.answers} of {inferred.of} answers inferred (attempts {inferred.attempts}, "
        f"probes {inferred.probes}); {inferred.backoff_draws} backoff draw(s), "
        f"{inferred.retry_after} Retry-After hint(s).</p>",
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_h(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )
