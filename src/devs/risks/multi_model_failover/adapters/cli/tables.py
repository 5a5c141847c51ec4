"""The tables of model states and of metrics: printed by ``failover state`` and ``metrics``,
and by ``failover demo`` at the end of its story.

Both the commands and the demo import this module; neither imports the other for these.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from ...core.health import HealthState
from ...core.projections import Metrics, Snapshot
from ...storage import GroupCommitStore
from .queries import STATE_TYPES, first_seen, snapshot_at
from .render import (
    STATE_STYLES,
    Output,
    clock_text,
    model_headers,
    model_rows,
    seconds_text,
    usage_totals,
)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def _model_order(snap: Snapshot) -> list[str]:
    return list(dict.fromkeys([*snap.models, *snap.states]))


class StateRow(msgspec.Struct, kw_only=True):
    """One model's state at an instant, as ``state`` prints it (a JSON object with --json)."""

    model: str
    state: HealthState
    in_rotation: bool
    since: datetime | None
    reason: str
    cause: str
    by: str


def state_rows(store: GroupCommitStore, at: datetime | None) -> list[StateRow]:
    """Each model's state at ``at`` (None: the end of the log), in configured order."""
    return rows_of(snapshot_at(store, at, STATE_TYPES), first_seen(store, at))


def rows_of(snap: Snapshot, seen: dict[str, datetime]) -> list[StateRow]:
    """Each model's state in ``snap``, in configured order; ``seen``: when each model was
    first configured (the ``since`` of a model whose state never changed)."""
    rows = []
    for model_id in _model_order(snap):
        state = snap.states[model_id]
        rows.append(
            StateRow(
                model=model_id,
                state=state.state,
                in_rotation=state.state.in_rotation,
                since=state.since or seen.get(model_id),
                reason=state.reason or ("configured" if state.since is None else ""),
                cause=state.cause or ("engine_started" if model_id in seen else ""),
                by=state.by,
            )
        )
    return rows


def print_states(out: Output, store: GroupCommitStore, instant: datetime | None) -> None:
    """The table of each model's state at ``instant`` (None: the end of the log)."""
    print_state_rows(out, state_rows(store, instant), store.location, instant)


def print_state_rows(
    out: Output, rows: list[StateRow], location: str, instant: datetime | None
) -> None:
    """The table of ``rows``: each model's state at ``instant`` in the log at ``location``."""
    when = clock_text(instant) if instant is not None else "the end of the log"
    if not rows:
        out.text(f"{location} names no model at {when}")
        return
    reference = instant or datetime.now(UTC)
    table = [
        [
            row.model,
            row.state.value,
            "yes" if row.in_rotation else "no",
            clock_text(row.since),
            _duration((reference - row.since).total_seconds()) if row.since else "-",
            _why(row),
        ]
        for row in rows
    ]
    styles = [STATE_STYLES[row.state] for row in rows]
    headers = ["model", "state", "in rotation", "since (UTC)", "for", "why"]
    out.table(f"model states at {when}", headers, table, styles)


def _why(row: StateRow) -> str:
    why = f"{row.reason} [{row.cause}]" if row.cause else row.reason
    return f"{why} by {row.by}" if row.by else why


def print_metrics(out: Output, snap: Snapshot) -> None:
    """The metrics as tables: totals, per model, failures by kind. Token usage and cost (a
    total and a column each) only when the log reported any."""
    m = snap.metrics
    out.table("totals", ["figure", "value"], _totals(m))
    out.table("per model", model_headers(m), model_rows(m))
    if m.failures_by_kind:
        kinds = sorted(m.failures_by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        out.table(
            "failed attempts by error kind", ["kind", "count"], [[k, str(n)] for k, n in kinds]
        )


def _totals(m: Metrics) -> list[list[str]]:
    figures: list[tuple[str, object]] = [
        ("calls", m.calls),
        ("calls succeeded", m.calls_succeeded),
        ("calls failed", m.calls_failed),
        ("calls cancelled", m.calls_cancelled),
        ("attempts", m.attempts),
        ("failed attempts", m.attempt_failures),
        ("retries", m.retries),
        ("failovers", m.failovers),
        ("backoffs", f"{m.backoffs} ({seconds_text(m.backoff_seconds)} in all)"),
        ("retry budget exhausted", m.retry_budget_exhausted),
        ("health probes", f"{m.probes} ({m.probe_failures} failed)"),
        ("state changes", m.state_changes),
        *usage_totals(m),
    ]
    return [[name, str(value)] for name, value in figures]
