"""Indexed, streaming reads of an event log for the command line and the report.

Every read goes through the store's ``read`` (pages of rows, decoded one by one), with an SQL
condition that lets the database use one index or a range of ``seq`` at a time. The SQL is the
same for SQLite and PostgreSQL (``?`` placeholders); the two spots where they differ come from
the store: ``store.unindexed(column)`` for a condition that should not drive the query (SQLite's
``+column``) and ``store.json_field(key)`` for a field of the JSON body. A reader pins the
log's last ``seq`` when it starts, so a log that other processes keep appending to gives one
consistent answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from ...core.events import EVENT_TYPES, EngineStarted, Event
from ...core.projections import AuditEntry, Snapshot, apply
from ...storage import HOT_TYPES, NOT_HOT, GroupCommitStore

STATE_TYPES: Final = ("engine_started", "state_changed", "maintenance")
AUDIT_TYPES: Final = ("state_changed", "maintenance")


@dataclass(frozen=True)
class EventFilter:
    """Which events to read; every given condition must hold (they combine with AND).

    ``model_id`` also matches failovers from or to that model. ``upto`` pins the last ``seq``
    read (None: no bound, as when following a live log).
    """

    since: datetime | None = None
    until: datetime | None = None
    call_id: str | None = None
    model_id: str | None = None
    types: tuple[str, ...] = ()
    upto: int | None = None


def scalar(store: GroupCommitStore, sql: str, params: tuple[object, ...] = ()) -> Any:
    """The first column of the first row of ``sql`` (None when there is no row)."""
    rows = store.query(sql, params)
    return rows[0][0] if rows else None


def _seq_window(store: GroupCommitStore, flt: EventFilter) -> tuple[int, int | None] | None:
    """The ``seq`` range that can hold events of the filter's time window; None if empty."""
    low = 0
    high = flt.upto
    if flt.since is not None:
        first = seq_stamped(store, flt.since, last=False)
        if first is None:
            return None
        low = first - 1
    if flt.until is not None:
        last = seq_stamped(store, flt.until, last=True)
        if last is None:
            return None
        high = last if high is None else min(high, last)
    return low, high


def seq_stamped(store: GroupCommitStore, instant: datetime, *, last: bool) -> int | None:
    """The highest ``seq`` stamped at or before ``instant`` (``last``), or the lowest stamped
    at or after it; None when there is none.

    Exact whatever the clocks of the writers did, and quick on a long log: the time index
    holds the rows on one side of ``instant``, a walk of the table in ``seq`` order from its
    far end reaches the answer from the other, and the query reads the side with fewer rows
    (estimated from the row the index finds first, as stamps follow ``seq`` but for clock
    skew). Either query alone read millions of rows for an instant on its wrong side.
    """
    at = store.at_param(instant)
    op, order, aggregate = ("<=", "DESC", "max") if last else (">=", "ASC", "min")
    nearest = f"SELECT seq FROM events WHERE at {op} ? ORDER BY at {order} LIMIT 1"  # noqa: S608 - constants only
    probe = scalar(store, nearest, (at,))
    if probe is None:
        return None
    first = int(scalar(store, "SELECT min(seq) FROM events"))
    final = int(scalar(store, "SELECT max(seq) FROM events"))
    stamped_side = int(probe) - first if last else final - int(probe)
    if stamped_side <= (final - first) // 2:
        sql = f"SELECT {aggregate}({store.unindexed('seq')}) FROM events WHERE at {op} ?"  # noqa: S608 - constants only
    else:
        sql = f"SELECT {aggregate}(seq) FROM events WHERE {store.unindexed('at')} {op} ?"  # noqa: S608 - constants only
    return int(scalar(store, sql, (at,)))


def _condition(
    store: GroupCommitStore, flt: EventFilter, high: int | None
) -> tuple[str, tuple[object, ...]]:
    """The SQL condition of ``flt`` and its parameters; one term at most uses an index."""
    terms: list[str] = []
    params: list[object] = []
    plain = store.unindexed
    if flt.call_id is not None:
        terms.append("call_id = ?")
        params.append(flt.call_id)
    # Types outside the hot path have a partial index; NOT_HOT, repeated word for word, is
    # what lets the database use it. A call id, when given, drives the query instead.
    by_type = bool(flt.types) and flt.call_id is None and not set(flt.types) & set(HOT_TYPES)
    if len(flt.types) == 1:
        terms.append("type = ?" if by_type else f"{plain('type')} = ?")
        params.append(flt.types[0])
    elif flt.types:
        column = "type" if by_type else plain("type")
        terms.append(f"{column} IN ({','.join('?' * len(flt.types))})")
        params.extend(flt.types)
    if by_type:
        terms.append(NOT_HOT)
    if flt.model_id is not None:
        # CASE, not AND: only a failover's body is parsed, whatever order the planner picks.
        from_model, to_model = store.json_field("from_model"), store.json_field("to_model")
        terms.append(
            f"({plain('model_id')} = ? OR CASE WHEN {plain('type')} = 'failover' "
            f"THEN {from_model} = ? OR {to_model} = ? ELSE FALSE END)"
        )
        params.extend([flt.model_id] * 3)
    if flt.since is not None:
        terms.append(f"{plain('at')} >= ?")
        params.append(store.at_param(flt.since))
    if flt.until is not None:
        terms.append(f"{plain('at')} <= ?")
        params.append(store.at_param(flt.until))
    if high is not None:
        terms.append("seq <= ?")
        params.append(high)
    return " AND ".join(terms), tuple(params)


def read_events(store: GroupCommitStore, flt: EventFilter, *, after: int = 0) -> Iterator[Event]:
    """The events matching ``flt`` with ``seq > after``, oldest first, streamed.

    With ``flt.types``, the rows of types this version does not know are read first, as a read
    of every type would: skipped and counted in ``store.unknown``, or refused (``strict``).
    """
    window = _seq_window(store, flt)
    if window is None:
        return
    low, high = window
    if flt.types:
        _read_unknown(store, replace(flt, types=()), after=max(after, low), high=high)
    where, params = _condition(store, flt, high)
    yield from store.read(after=max(after, low), where=where, params=params)


def _read_unknown(
    store: GroupCommitStore, flt: EventFilter, *, after: int, high: int | None
) -> None:
    """Read the rows of ``flt`` whose type this version does not know (none is hot)."""
    where, params = _condition(store, flt, high)
    known = sorted(EVENT_TYPES)
    unknown = f"{NOT_HOT} AND type NOT IN ({','.join('?' * len(known))})"
    where = f"{where} AND {unknown}" if where else unknown
    for _ in store.read(after=after, where=where, params=(*params, *known)):
        pass  # skipped (and counted) by ``read``, or refused


def nth_last_seq(store: GroupCommitStore, flt: EventFilter, count: int) -> int:
    """The ``after`` that leaves only the last ``count`` events matching ``flt``."""
    window = _seq_window(store, flt)
    if window is None:
        return 0
    low, high = window
    where, params = _condition(store, flt, high)
    sql = "SELECT seq FROM events WHERE seq > ?"
    sql += f" AND {where}" if where else ""
    sql += " ORDER BY seq DESC LIMIT 1 OFFSET ?"
    found = scalar(store, sql, (low, *params, count - 1))
    return 0 if found is None else int(found) - 1


def pinned(store: GroupCommitStore, until: datetime | None = None, **kwargs: Any) -> EventFilter:
    """A filter up to ``until`` over the log as it stands now (its last ``seq`` pinned)."""
    return EventFilter(until=until, upto=store.last_seq(), **kwargs)


def fold_into(snapshot: Snapshot, events: Iterable[Event]) -> Snapshot:
    """Fold ``events`` into ``snapshot`` one at a time (the same fold the engine runs)."""
    for event in events:
        apply(snapshot, event)
    return snapshot


def snapshot_at(
    store: GroupCommitStore, at: datetime | None = None, types: tuple[str, ...] = ()
) -> Snapshot:
    """The projection of the log up to ``at`` (default: all of it): the events stamped at or
    before ``at``, in ``seq`` order, as ``Chain.fold`` defines it for an archived log (writers
    stamp an event before they commit it, so a few may be out of time order).

    ``types`` restricts the fold to those event types (enough for states or the audit trail,
    and far fewer rows to read). The whole fold (no ``types``) starts from the log's latest
    snapshot before its first event stamped at or after ``at`` (every event up to there is
    stamped before it), then folds what follows that is stamped at or before ``at``.
    """
    if types:
        return fold_into(Snapshot(), read_events(store, pinned(store, at, types=types)))
    if at is None:
        return store.snapshots.load()[0]
    last = store.last_seq()  # the end first: an event appended meanwhile is not folded
    late = seq_stamped(store, at, last=False)
    snap, cursor = store.snapshots.load(last if late is None else min(late - 1, last))
    return fold_into(snap, read_events(store, EventFilter(until=at, upto=last), after=cursor))


def audit_trail(store: GroupCommitStore) -> list[AuditEntry]:
    """Every state change and maintenance action the log holds, oldest first.

    A fold keeps only its last ``AUDIT_KEPT`` entries; this one keeps them all. An archived log
    starts from the snapshot at its cut, whose trail holds the last entries before it.
    """
    first = scalar(store, "SELECT min(seq) FROM events")
    snap, cursor = store.snapshots.load(int(first) - 1) if first is not None else (Snapshot(), 0)
    entries = list(snap.audit)
    for event in read_events(store, pinned(store, types=STATE_TYPES), after=cursor):
        last = snap.audit[-1] if snap.audit else None
        apply(snap, event)
        if snap.audit and snap.audit[-1] is not last:  # an event adds one entry at most
            entries.append(snap.audit[-1])
    return entries


def first_seen(store: GroupCommitStore, at: datetime | None = None) -> dict[str, datetime]:
    """When each model was first configured (its first ``engine_started``), up to ``at``."""
    seen: dict[str, datetime] = {}
    for event in read_events(store, pinned(store, at, types=("engine_started",))):
        if isinstance(event, EngineStarted):
            for model_id in event.models:
                seen.setdefault(model_id, event.at)
    return seen


def known_models(store: GroupCommitStore) -> list[str]:
    """Every model id the log knows: configured ones in order, then any other one seen."""
    models = dict.fromkeys(first_seen(store))
    # Every model an engine used is in its engine_started; the others (a log written by other
    # means) show up in the indexed, rarer events: state changes, probes, failures.
    rows = store.query(
        f"SELECT DISTINCT model_id FROM events WHERE model_id IS NOT NULL AND {NOT_HOT} "  # noqa: S608 - constants only
        "ORDER BY model_id"
    )
    models.update(dict.fromkeys(row[0] for row in rows))
    return list(models)
