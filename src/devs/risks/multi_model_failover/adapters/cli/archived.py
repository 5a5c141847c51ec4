"""A live log and its archives, read as one log by the point-in-time commands.

An archived log keeps a ``cut`` snapshot where its first events were moved out, and records
each archive in its table ``archives`` (``storage.archive``). A question about an instant
after every archived event (at or after the ``last_at`` of the archives) is answered by the
live log alone. One about an earlier instant needs the archives: given with ``--archive``, they
are read first, in ``seq`` order, then the live log; not given, the command says which archive
files hold those events.

Archives given must be archives of this log, and together with the live log leave no gap:
the first one's own snapshot of what came before it is where the fold starts, unless one of
the archives has a snapshot nearer the instant asked about. An archive keeps a snapshot every
so many events (``storage.archive``): a fold up to an instant starts from the latest one that
holds no event stamped at or after the instant, and reads the events from there (an archive
written by an older version has none: the fold starts at its beginning, slower but the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from ...core.errors import EventLogError
from ...core.events import EngineStarted, Event
from ...core.projections import Snapshot
from ...storage import GroupCommitStore
from ...storage.archive import ArchiveRecord, archive_of, log_identity, records
from .queries import EventFilter, fold_into, read_events, scalar, seq_stamped, snapshot_at
from .render import clock_text


class ArchiveChainError(ValueError):
    """Archives that cannot be read with the live log (another log's, a gap, no events)."""


@dataclass(frozen=True)
class Segment:
    """The events of ``store`` with ``after < seq <= upto``."""

    store: GroupCommitStore
    after: int
    upto: int


@dataclass(frozen=True)
class Chain:
    """The archives given (in ``seq`` order), then the live log, as one log.

    ``records``: what the live log recorded of its archives. ``first``: the first ``seq`` the
    chain holds (the fold starts from the snapshot just before it, when it is not 1).
    """

    live: GroupCommitStore
    segments: tuple[Segment, ...]
    records: tuple[ArchiveRecord, ...]
    first: int

    @property
    def horizon(self) -> datetime | None:
        """The latest time among the events archived before the chain's first (None: the
        chain holds the log from its start). An instant before it needs those events."""
        return horizon(self.records, self.first)

    def missing(self, since: datetime | None = None) -> list[ArchiveRecord]:
        """The archives of events before the chain holding events at or after ``since``."""
        return missing(self.records, self.first, since)

    def base(self) -> Snapshot:
        """The fold of everything before the chain's first event."""
        if self.first <= 1:
            return Snapshot()
        head = self.segments[0].store
        snap, cursor = head.snapshots.load(self.first - 1)
        if cursor != self.first - 1:
            raise ArchiveChainError(
                f"{head.location} has no snapshot of the events before seq {self.first}"
            )
        return snap

    def events(self, flt: EventFilter, *, after: int = 0) -> Iterator[Event]:
        """The events matching ``flt`` (its ``upto`` ignored), archives first, oldest first."""
        for segment in self.segments:
            if segment.upto <= after:
                continue
            bounded = replace(flt, upto=segment.upto)
            yield from read_events(segment.store, bounded, after=max(after, segment.after))

    def fold(self, at: datetime | None, types: tuple[str, ...] = ()) -> Snapshot:
        """The projection of the log up to ``at`` (default: all of it): the events stamped
        at or before ``at``, in ``seq`` order (``types``: only those are read after the
        snapshot the fold starts from, which holds every type)."""
        snap, after = self.start(at)
        return fold_into(snap, self.events(EventFilter(until=at, types=types), after=after))

    def start(self, at: datetime | None) -> tuple[Snapshot, int]:
        """Where a fold up to ``at`` starts, and the cursor of that snapshot: the latest
        snapshot of an archive given that holds no event stamped at or after ``at`` (a
        snapshot holds every event up to its cursor), else the chain's base."""
        bound = self._bound(at)
        best: tuple[int, GroupCommitStore] | None = None
        for segment in self.segments[:-1]:  # the archives (the last segment is the live log)
            if segment.after >= bound:
                break
            found = segment.store.snapshots.nearest(min(bound, segment.upto))
            if found is not None and found >= self.first and (best is None or found > best[0]):
                best = (found, segment.store)
        if best is not None:
            with contextlib.suppress(EventLogError):  # then from the base, as before
                return best[1].snapshots.load(best[0])
        return self.base(), self.first - 1

    def _bound(self, at: datetime | None) -> int:
        """The last seq of the archives before their first event stamped at or after ``at``
        (their last seq when there is none)."""
        archives = self.segments[:-1]
        if not archives:
            return self.first - 1
        if at is not None:
            for segment in archives:
                late = seq_stamped(segment.store, at, last=False)
                if late is not None:
                    return min(late - 1, segment.upto)
        return archives[-1].upto

    def first_seen(self, at: datetime | None) -> dict[str, datetime]:
        """When each model was first configured (its first ``engine_started``), up to ``at``."""
        seen: dict[str, datetime] = {}
        for event in self.events(EventFilter(until=at, types=("engine_started",))):
            if isinstance(event, EngineStarted):
                for model_id in event.models:
                    seen.setdefault(model_id, event.at)
        return seen


def fold_log(
    live: GroupCommitStore, at: datetime | None = None, types: tuple[str, ...] = ()
) -> Snapshot:
    """The projection of the live log up to ``at`` (default: all of it); ``types`` may
    restrict the events read (the snapshot a fold starts from holds every type).

    An archived log starts from its cut snapshot (the whole log: from its latest snapshot);
    the caller has made sure that no archived event is after ``at`` (see ``horizon``).
    """
    found = tuple(records(live))
    if not found:
        return snapshot_at(live, at, types)
    if at is None:
        return live.snapshots.load()[0]
    return live_chain(live, found).fold(at, types)


def live_chain(live: GroupCommitStore, found: Sequence[ArchiveRecord] | None = None) -> Chain:
    """The live log alone as a ``Chain``: its fold starts from its cut snapshot, if any."""
    found = tuple(records(live)) if found is None else tuple(found)
    first = live_first(live, found)
    return Chain(live, (Segment(live, first - 1, live.last_seq()),), found, first)


def horizon(found: Sequence[ArchiveRecord], first: int) -> datetime | None:
    """The latest ``last_at`` of the archives of events before seq ``first``."""
    return max((r.last_at for r in found if r.last_seq < first), default=None)


def missing(
    found: Sequence[ArchiveRecord], first: int, since: datetime | None = None
) -> list[ArchiveRecord]:
    """The archives of events before seq ``first`` with events at or after ``since``."""
    return [r for r in found if r.last_seq < first and (since is None or r.last_at >= since)]


def live_first(live: GroupCommitStore, found: Sequence[ArchiveRecord]) -> int:
    """The live log's first ``seq`` (after its cut when it holds no event)."""
    rows = live.query("SELECT min(seq) FROM events")
    if rows and rows[0][0] is not None:
        return int(rows[0][0])
    return max((r.last_seq for r in found), default=0) + 1


def where_archived(found: Sequence[ArchiveRecord]) -> str:
    """``found`` for a message: the seq and time range, the files that hold them, and how to
    read them."""
    paths = list(dict.fromkeys(r.path for r in found))
    first, last = min(r.first_seq for r in found), max(r.last_seq for r in found)
    since = clock_text(min(r.first_at for r in found))
    until = clock_text(max(r.last_at for r in found))
    how = f"add --archive {paths[0]}" if len(paths) == 1 else "add --archive for each"
    return (
        f"seq {first} to {last} ({since} to {until}) are archived in {', '.join(paths)}: "
        f"{how} to read them"
    )


@contextlib.contextmanager
def chain(live: GroupCommitStore, archives: Sequence[GroupCommitStore]) -> Iterator[Chain]:
    """``archives`` (open stores, any order) and ``live`` as one ``Chain``; raises
    ``ArchiveChainError`` naming the file when one is not this log's or they leave a gap."""
    found = tuple(records(live))
    identity = log_identity(live)
    spans: list[tuple[int, int, GroupCommitStore]] = []
    for store in archives:
        owner = archive_of(store)
        if owner != identity:
            what = "not an archive" if owner is None else "an archive of another log"
            raise ArchiveChainError(f"{store.location} is {what}, not of {live.location}")
        # Two queries: each is one look at the end of the table, where SQLite answers
        # min and max together by reading a whole index.
        low = scalar(store, "SELECT min(seq) FROM events")
        if low is None:
            raise ArchiveChainError(f"archive {store.location} holds no event")
        spans.append((int(low), int(scalar(store, "SELECT max(seq) FROM events")), store))
    spans.sort(key=lambda span: span[0])
    segments: list[Segment] = []
    reached = spans[0][0] - 1 if spans else 0
    for low, high, store in spans:
        if low > reached + 1:
            _gap(found, reached, low, store.location)
        segments.append(Segment(store, reached, high))
        reached = max(reached, high)
    start = live_first(live, found)
    if spans and start > reached + 1:
        _gap(found, reached, start, live.location)
    segments.append(Segment(live, reached if spans else start - 1, live.last_seq()))
    yield Chain(live, tuple(segments), found, spans[0][0] if spans else start)


def _gap(found: Sequence[ArchiveRecord], reached: int, low: int, location: str) -> None:
    between = [r for r in found if r.first_seq <= low - 1 and r.last_seq > reached]
    where = f"; they are in {', '.join(dict.fromkeys(r.path for r in between))}" if between else ""
    raise ArchiveChainError(
        f"the archives given leave seq {reached + 1} to {low - 1} out (before {location}){where}"
    )
