"""``failover report``: one self-contained HTML page that shows an incident at a glance.

The page holds a per-model health timeline drawn as inline SVG (one band per model coloured by
state over time, a mark for every failover and maintenance action), the metrics, the failed and
the slowest calls, and the audit trail. It has no script and no external URL: it opens offline
and can be attached to a ticket. The log is read in one streaming pass (plus an indexed fold of
the state events before ``since``).
"""

from __future__ import annotations

import heapq
import html
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ...core.events import CallFailed, CallSucceeded, Event, Failover, Maintenance, StateChanged
from ...core.health import HealthState
from ...core.projections import AuditEntry, Metrics, ModelState, Snapshot, apply
from ...storage import GroupCommitStore
from .archived import fold_log, live_chain
from .queries import STATE_TYPES, pinned, read_events
from .render import (
    AUDIT_HEADERS,
    audit_rows,
    clock_text,
    cost_text,
    has_usage,
    model_headers,
    model_rows,
    seconds_text,
    tokens_text,
    visible,
)

COLOURS: Final = {
    HealthState.HEALTHY: "#2f9e5b",
    HealthState.DEGRADED: "#e6a117",
    HealthState.UNHEALTHY: "#d43d3d",
    HealthState.MAINTENANCE: "#5b6fd6",
}
WIDTH: Final = 1200
LABEL: Final = 130
BAND: Final = 26
GAP: Final = 16
TOP: Final = 34
# Beyond this many failovers the marks are binned per pixel column (each says its count).
MAX_MARKS: Final = 2_000
LISTED: Final = 15
AUDIT_ROWS: Final = 200
DAY: Final = 86_400


def _html(value: str) -> str:
    """``value`` for HTML text or an attribute: markup escaped, control characters shown
    (``html.escape`` leaves an ESC or a bidi override as it is)."""
    return html.escape(visible(value))


@dataclass
class Incident:
    """What the report shows, gathered in one pass over the log."""

    start: datetime
    end: datetime
    models: list[str]
    initial: dict[str, HealthState]
    changes: dict[str, list[tuple[datetime, HealthState]]]
    failovers: list[Failover] = field(default_factory=list)
    maintenance: list[Maintenance] = field(default_factory=list)
    slowest: list[tuple[float, int, CallSucceeded | CallFailed]] = field(default_factory=list)
    failed: deque[CallFailed] = field(default_factory=lambda: deque(maxlen=LISTED))
    failed_count: int = 0
    events: int = 0
    metrics: Metrics = field(default_factory=Metrics)
    audit: list[AuditEntry] = field(default_factory=list)


def gather(
    store: GroupCommitStore, since: datetime | None = None, until: datetime | None = None
) -> Incident | None:
    """Read the log between ``since`` and ``until`` (default: all of it); None if empty."""
    # An archived log: the states at its cut, where it now starts (or the fold to ``since``).
    before = fold_log(store, since, STATE_TYPES) if since is not None else live_chain(store).base()
    snap = Snapshot(
        states={m: ModelState(state=s.state) for m, s in before.states.items()},
        models=before.models,
    )
    incident = Incident(
        start=since or datetime.max.replace(tzinfo=UTC),
        end=until or datetime.min.replace(tzinfo=UTC),
        models=[],
        initial={m: s.state for m, s in before.states.items()},
        changes={},
    )
    first: datetime | None = None
    last: datetime | None = None
    for event in read_events(store, pinned(store, until, since=since)):
        apply(snap, event)
        first = first or event.at
        last = event.at
        _collect(incident, snap, event)
    if first is None or last is None:
        return None
    incident.start = since or first
    incident.end = until or last
    incident.events = snap.events
    incident.metrics = snap.metrics
    incident.audit = snap.audit
    incident.models = list(dict.fromkeys([*before.models, *snap.models, *snap.states]))
    incident.slowest.sort(reverse=True)
    return incident


def _collect(incident: Incident, snap: Snapshot, event: Event) -> None:
    match event:
        case StateChanged() | Maintenance():
            if isinstance(event, Maintenance):
                incident.maintenance.append(event)
            state = snap.state_of(event.model_id).state
            changes = incident.changes.setdefault(event.model_id, [])
            if not changes or changes[-1][1] is not state:
                changes.append((event.at, state))
        case Failover():
            incident.failovers.append(event)
        case CallSucceeded() | CallFailed():
            if isinstance(event, CallFailed):
                incident.failed_count += 1
                incident.failed.append(event)
            item = (event.latency, event.seq, event)
            if len(incident.slowest) < LISTED:
                heapq.heappush(incident.slowest, item)
            elif item > incident.slowest[0]:
                heapq.heapreplace(incident.slowest, item)
        case _:
            pass


# -- the SVG timeline ----------------------------------------------------------------------


class _Scale:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.span = max((end - start).total_seconds(), 1.0)

    def x(self, instant: datetime) -> float:
        offset = (instant - self.start).total_seconds() / self.span
        return LABEL + min(max(offset, 0.0), 1.0) * (WIDTH - LABEL - 10)


_STEPS: Final = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600,
                 43_200, 86_400)  # fmt: skip


def _ticks(start: datetime, end: datetime) -> Iterable[datetime]:
    """About ten round instants strictly after ``start``, up to ``end``."""
    span = max((end - start).total_seconds(), 1.0)
    step = next((s for s in _STEPS if span / s <= 10), None)
    if step is None:  # longer than ten days (a window may span years 1 to 9999): whole days
        step = math.ceil(span / 10 / DAY) * DAY
    try:
        first = start + timedelta(seconds=step - start.timestamp() % step)
    except OverflowError:  # start is within a step of the last representable instant
        return
    if first > end:
        return
    for index in range(int((end - first).total_seconds() // step) + 1):
        yield first + timedelta(seconds=index * step)


def _tick_label(tick: datetime, span: float) -> str:
    if span < 600:
        return tick.strftime("%H:%M:%S")
    return tick.strftime("%Y-%m-%d" if span > 2 * DAY else "%H:%M")


def _band(incident: Incident, scale: _Scale, model_id: str, row: int) -> list[str]:
    y = TOP + row * (BAND + GAP)
    parts = [
        f'<g class="band" data-model="{_html(model_id)}">',
        f'<text class="label" x="{LABEL - 8}" y="{y + BAND / 2 + 4}" '
        f'text-anchor="end">{_html(model_id)}</text>',
    ]
    state = incident.initial.get(model_id, HealthState.HEALTHY)
    since = incident.start
    for at, new_state in incident.changes.get(model_id, []):
        if at > since:
            parts.append(_segment(scale, y, since, at, state))
            since = at
        state = new_state
    parts.append(_segment(scale, y, since, max(since, incident.end), state))
    parts.extend(_failover_marks(incident, scale, model_id, y))
    parts.extend(_maintenance_marks(incident, scale, model_id, y))
    parts.append("</g>")
    return parts


def _segment(scale: _Scale, y: float, start: datetime, end: datetime, state: HealthState) -> str:
    x0, x1 = scale.x(start), scale.x(end)
    title = f"{state.value}: {clock_text(start)} to {clock_text(end)} UTC"
    return (
        f'<rect class="segment state-{state.value}" x="{x0:.1f}" y="{y}" '
        f'width="{max(x1 - x0, 0.5):.1f}" height="{BAND}" fill="{COLOURS[state]}">'
        f"<title>{_html(title)}</title></rect>"
    )


def _failover_marks(incident: Incident, scale: _Scale, model_id: str, y: float) -> list[str]:
    mine = [f for f in incident.failovers if f.from_model == model_id]
    binned = len(incident.failovers) > MAX_MARKS
    groups: dict[int, list[Failover]] = {}
    for index, event in enumerate(mine):
        key = round(scale.x(event.at)) if binned else index
        groups.setdefault(key, []).append(event)
    marks = []
    for events in groups.values():
        first = events[0]
        x = scale.x(first.at)
        if len(events) == 1:
            title = (
                f"failover {first.from_model} -> {first.to_model} ({first.reason.value}) "
                f"at {clock_text(first.at)}, call {first.call_id}"
            )
        else:
            title = f"{len(events)} failovers from {model_id} around {clock_text(first.at)}"
        marks.append(
            f'<path class="failover-mark" data-count="{len(events)}" '
            f'd="M{x - 4:.1f},{y - 7} L{x + 4:.1f},{y - 7} L{x:.1f},{y + 1} Z">'
            f"<title>{_html(title)}</title></path>"
        )
    return marks


def _maintenance_marks(incident: Incident, scale: _Scale, model_id: str, y: float) -> list[str]:
    marks = []
    for event in incident.maintenance:
        if event.model_id != model_id:
            continue
        x = scale.x(event.at)
        by = f" by {event.by}" if event.by else ""
        title = (
            f"maintenance {'on' if event.on else 'off'}{by} at {clock_text(event.at)}: "
            f"{event.reason}"
        )
        bottom = y + BAND
        marks.append(
            f'<path class="maintenance-mark" data-on="{str(event.on).lower()}" '
            f'd="M{x:.1f},{bottom - 2} L{x + 5:.1f},{bottom + 5} L{x:.1f},{bottom + 12} '
            f'L{x - 5:.1f},{bottom + 5} Z"><title>{_html(title)}</title></path>'
        )
    return marks


def health_svg(incident: Incident) -> str:
    """The health timeline: a band per model, state colours over time, marks for actions."""
    scale = _Scale(incident.start, incident.end)
    height = TOP + len(incident.models) * (BAND + GAP) + 30
    parts = [
        f'<svg class="health" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        'role="img" aria-label="health of each model over time">'
    ]
    ticks = list(_ticks(incident.start, incident.end))
    span = (incident.end - incident.start).total_seconds()
    bottom = height - 26
    for tick in ticks:
        x = scale.x(tick)
        parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text class="tick-label" x="{x:.1f}" y="{TOP - 12}" text-anchor="middle">'
            f"{_tick_label(tick, span)}</text>"
        )
    for row, model_id in enumerate(incident.models):
        parts.extend(_band(incident, scale, model_id, row))
    parts.append(
        f'<text class="tick-label" x="{LABEL}" y="{height - 6}">'
        f"from {clock_text(incident.start)} UTC</text>"
        f'<text class="tick-label" x="{WIDTH - 10}" y="{height - 6}" text-anchor="end">'
        f"to {clock_text(incident.end)} UTC</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


# -- the page ------------------------------------------------------------------------------

_CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 24px 32px; background: #fbfbfd; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #5b6475; margin: 0 0 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0 8px; }
.card { background: #fff; border: 1px solid #e1e4ec; border-radius: 8px; padding: 8px 14px;
        min-width: 96px; }
.card b { display: block; font-size: 20px; } .card span { color: #5b6475; font-size: 12px; }
.card.bad b { color: #c23030; } .card.warn b { color: #b87a00; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 8px; }
th, td { border: 1px solid #e1e4ec; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f8; font-weight: 600; } td.num { text-align: right;
     font-variant-numeric: tabular-nums; }
.panel { background: #fff; border: 1px solid #e1e4ec; border-radius: 8px; padding: 10px;
         overflow-x: auto; }
svg.health text { font-size: 12px; fill: #1d2330; } svg.health .label { font-weight: 600; }
svg.health .tick { stroke: #d5d9e3; stroke-width: 1; } svg.health .tick-label { fill: #5b6475; }
svg.health .failover-mark { fill: #1d2330; stroke: #fff; stroke-width: 0.8; }
svg.health .maintenance-mark { fill: #5b6fd6; stroke: #fff; stroke-width: 0.8; }
.legend { display: flex; gap: 18px; margin: 8px 0 0 4px; color: #3b4252; font-size: 13px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          vertical-align: -1px; margin-right: 5px; }
.muted { color: #5b6475; }
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_html(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_html(c)}</td>' if i in numeric else f"<td>{_html(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return '<p class="muted">none</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _card(label: str, value: object, tone: str = "") -> str:
    return f'<div class="card {tone}"><b>{_html(str(value))}</b><span>{_html(label)}</span></div>'


def _cards(incident: Incident) -> str:
    m = incident.metrics
    return (
        '<div class="cards">'
        + "".join(
            [
                _card("calls", m.calls),
                _card("succeeded", m.calls_succeeded),
                _card("failed", m.calls_failed, "bad" if m.calls_failed else ""),
                _card("failovers", m.failovers, "warn" if m.failovers else ""),
                _card("attempts", m.attempts),
                _card("failed attempts", m.attempt_failures, "warn" if m.attempt_failures else ""),
                _card("retries", m.retries),
                _card("state changes", m.state_changes),
                _card("events", incident.events),
                *_usage_cards(m),
            ]
        )
        + "</div>"
    )


def _usage_cards(m: Metrics) -> list[str]:
    """Tokens and cost, when the log reported usage (cost ``-`` when no model had a price)."""
    if not has_usage(m):
        return []
    return [
        _card("input tokens", tokens_text(m.input_tokens)),
        _card("output tokens", tokens_text(m.output_tokens)),
        _card("cost", cost_text(m.cost)),
    ]


def _legend() -> str:
    items = [
        f'<span><i class="swatch" style="background:{colour}"></i>{state.value}</span>'
        for state, colour in COLOURS.items()
    ]
    items.append("<span>&#9660; failover (from this model)</span>")
    items.append('<span style="color:#5b6fd6">&#9670;</span><span>maintenance on/off</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _call_row(event: CallSucceeded | CallFailed) -> list[str]:
    if isinstance(event, CallFailed):
        outcome = f"failed ({event.reason}, {event.error_kind.value})"
    else:
        outcome = f"served by {event.model_id}"
    return [
        clock_text(event.at),
        event.call_id,
        outcome,
        str(event.attempts),
        str(event.failovers),
        seconds_text(event.latency),
    ]


def render_page(incident: Incident, title: str) -> str:
    """The whole HTML page of ``incident``."""
    m = incident.metrics
    calls_headers = ["time (UTC)", "call", "outcome", "attempts", "failovers", "latency"]
    failed_note = (
        f'<p class="muted">{incident.failed_count} failed call(s); the last {LISTED} shown.</p>'
        if incident.failed_count > LISTED
        else ""
    )
    audit_note = (
        f'<p class="muted">{len(incident.audit)} entries; the last {AUDIT_ROWS} shown.</p>'
        if len(incident.audit) > AUDIT_ROWS
        else ""
    )
    kinds = sorted(m.failures_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    headers = model_headers(m)
    sections = [
        f"<h1>{_html(title)}</h1>",
        f'<p class="sub">{clock_text(incident.start)} to {clock_text(incident.end)} UTC '
        f"&middot; {len(incident.models)} models &middot; {incident.events} events</p>",
        _cards(incident),
        "<h2>Health of each model over time</h2>",
        f'<div class="panel">{health_svg(incident)}{_legend()}</div>',
        "<h2>Metrics per model</h2>",
        _table(headers, model_rows(m), set(range(1, len(headers)))),
        "<h2>Failed attempts by error kind</h2>",
        _table(["kind", "count"], [[k, str(n)] for k, n in kinds], {1}),
        "<h2>Failed calls</h2>",
        failed_note,
        _table(calls_headers, [_call_row(e) for e in reversed(incident.failed)], {3, 4, 5}),
        "<h2>Slowest calls</h2>",
        _table(calls_headers, [_call_row(e) for _, _, e in incident.slowest], {3, 4, 5}),
        "<h2>State changes and maintenance actions</h2>",
        audit_note,
        _table(list(AUDIT_HEADERS), audit_rows(incident.audit[-AUDIT_ROWS:]), set()),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_html(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def build_report(
    store: GroupCommitStore, *, since: datetime | None = None, until: datetime | None = None
) -> tuple[str, str]:
    """The HTML page of the log's incident and a one-line summary of it."""
    incident = gather(store, since, until)
    title = f"Incident report: {store.location}"
    if incident is None:
        empty = Incident(
            start=since or datetime.now(UTC),
            end=until or datetime.now(UTC),
            models=[],
            initial={},
            changes={},
        )
        return render_page(empty, title), "no events in that window"
    summary = (
        f"{incident.events} events, {len(incident.models)} models, "
        f"{len(incident.failovers)} failovers, {incident.failed_count} failed calls"
    )
    return render_page(incident, title), summary
