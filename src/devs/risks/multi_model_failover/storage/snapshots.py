"""Snapshots of the fold: where a load begins, so that starting an engine and ``replay`` cost
what the log gained since the last snapshot, not what it holds.

A snapshot is the fold (``projections.Snapshot``) of the log up to its ``cursor`` (the seq of
the last event folded), stored as msgpack in the table ``snapshots`` with its ``kind``, the
time it was written and the ``fold`` key of the code that made it (``projections.FOLD_KEY``).

Kinds:

- ``periodic``: every ``every`` committed events (default ``SNAPSHOT_EVERY``; None: never),
  taken on a background thread of its own so that reading and folding never hold up the
  writer (and paced, ``Pace``, so that they never hold up an event loop either); and by an
  engine whose start-up folded that many events (``loading(keep=True)``).
- ``close``: when a store that appended events closes (only what is committed).
- ``cut``: left by an archive. The events up to its cursor are no longer in this log, so it is
  the *base* of every fold: ``from_start`` folds from the latest cut (or from nothing).
- ``archive``: written into an archive file as the events are copied into it, every
  ``every`` of them (``storage.archive``), so that a question about an instant inside the
  archive folds at most that many events past one. Never pruned: an archive's events do not
  change, so its snapshots stay true (a few KB each).

``load`` starts from the latest snapshot at or before where it is asked to stop whose key is
this version's, and folds the events after it; ``loading`` does the same in steps (``Loading``:
the reads on a worker thread, the folding on an engine's event loop, in slices).

A snapshot of another fold (an older or newer version) or one that does not decode is ignored
(logged once; another fold's snapshots in one line for them all) and never trusted: the load
folds from an earlier point, and the next snapshot replaces it (a periodic one of this version
deletes every periodic one of another fold before it: after an upgrade none of them could be
used again). A stale or damaged *cut* cannot be folded over (its events are archived):
``EventLogError`` says so and names the archives.

A store keeps the latest cut and, after it, every ``archive`` snapshot and one ``periodic`` or
``close`` snapshot per ``every`` events of ``seq`` (the latest taken in each stretch ``k * every
<= cursor < (k + 1) * every``); the others are pruned each time one is saved. They stay until
an archive moves their events out: the archive copies them, so that it folds at most about
``every`` events whatever it moves, and a question about an old instant folds at most that many
past one. They cost a few KB per ``every`` events (1 to 3% of the log's size at the default).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import msgspec
from loguru import logger

from ..core.errors import EventLogError
from ..core.events import Event
from ..core.projections import FOLD_KEY, Snapshot, apply

# Default: a snapshot every this many committed events (and one at close). A start-up then
# folds at most this many events past the snapshot (a start after a crash answered its first
# call in 86 to 107 ms on this 2-core machine, the loop free meanwhile), and a snapshot costs
# one read of as many events on the snapshot thread.
SNAPSHOT_EVERY: Final = 10_000
# The table, in both backends' SQL (``{blob}``: BLOB for SQLite, bytea for PostgreSQL).
SNAPSHOTS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS snapshots (cursor {int} PRIMARY KEY, kind text NOT NULL, "
    "fold text NOT NULL, at text NOT NULL, body {blob} NOT NULL)"
)

# The latest cut without reading the table (a log keeps a snapshot per ``every`` events, each
# a few KB): a load starts by finding it. Made by a store that may write; without it, the same
# answer from a scan.
SNAPSHOTS_CUT_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS snapshots_cut ON snapshots (cursor) WHERE kind = 'cut'"
)

Kind = Literal["periodic", "close", "cut", "archive"]
KINDS: Final[tuple[str, ...]] = ("periodic", "close", "cut", "archive")
# Seconds ``at_close`` waits for a periodic snapshot it has asked to stop.
_JOIN: Final = 30.0
# How many times a load starts over when an archive moved the base while it read.
_ATTEMPTS: Final = 3
# Rows a load in steps fetches at a time: what a caller on an event loop folds in a few
# slices, and a short hold of the store's connection. A load on one thread fetches pages as
# large as a read's (``_group_commit.PAGE``): fewer round trips to a PostgreSQL server.
_PAGE: Final = 1_000
_RUN_PAGE: Final = 5_000
# Rows folded between two looks at whether a periodic snapshot must stop (the store closes).
_STOP_EVERY: Final = 32
# Snapshot headers a load reads at a time, latest first (it uses the first that decodes).
_BATCH: Final = 8
# Differences a ``verify`` problem lists, at most.
_DIFFS: Final = 6

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)

_PRUNE: Final = (
    # Older cuts: the latest one is the base.
    "DELETE FROM snapshots WHERE kind = 'cut' AND cursor < "
    "(SELECT max(cursor) FROM snapshots WHERE kind = 'cut')",
    # Snapshots from before the cut: the events between them and the cut are gone.
    "DELETE FROM snapshots WHERE kind <> 'cut' AND cursor < "
    "(SELECT max(cursor) FROM snapshots WHERE kind = 'cut')",
)
# A periodic or close snapshot replaces the earlier ones of its stretch of ``every`` seqs
# (integer division in both backends' SQL), and every earlier one of another fold: after an
# upgrade, none of them would ever be used or replaced. (Engines that each append fewer than
# ``every`` events take no periodic one: their close ones are the log's snapshots.)
_THIN: Final = (
    "DELETE FROM snapshots WHERE kind IN ('periodic', 'close') AND cursor < ? AND "
    "(fold <> ? OR cursor / ? = ? / ?)"
)


class SnapshotStore(Protocol):
    """What snapshots need of their store (a ``GroupCommitStore``)."""

    errors: int
    last_error: str | None
    has_snapshots: bool
    _appended: int
    _failing: bool

    @property
    def location(self) -> str:
        """Where the log is, for messages."""

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until this store's appends are committed."""

    def last_seq(self) -> int:
        """The highest stored seq."""

    def read(
        self,
        *,
        after: int = 0,
        where: str = "",
        params: tuple[object, ...] = (),
        lenient: bool = False,
    ) -> Iterator[Event]:
        """Stored events past ``after`` matching ``where``, oldest first."""

    def reader(
        self, *, where: str = "", params: tuple[object, ...] = (), lenient: bool = False, page: int
    ) -> RowReader:
        """``read`` in two halves: fetch pages of rows, decode each."""

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read query."""

    def transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run write statements in one transaction."""


class RowReader(Protocol):
    """What a ``SnapshotStore.reader`` gives (``_group_commit.RowReader``)."""

    def fetch(self, after: int) -> list[tuple[Any, ...]]:
        """The next page of rows with ``seq > after`` (``row[0]`` is the seq)."""

    def decode(self, row: Sequence[Any]) -> Event | None:
        """The event of ``row``, or None for a row skipped."""

    def done(self) -> None:
        """The read is over (warns once for skipped events of unknown types)."""


class _Stopped(Exception):
    """A periodic snapshot was told to stop (the store is closing)."""


class _Row(msgspec.Struct, frozen=True):
    """A snapshot's header: no body."""

    cursor: int
    kind: str
    fold: str


@dataclass(frozen=True)
class SnapshotCheck:
    """What ``Snapshots.verify`` found.

    ``problems``: snapshots this version trusts that disagree with the fold of the log from
    its base, or a base that cannot be folded from (``failover verify`` fails on any).
    ``notes``: snapshots ignored (another fold's, damaged) and other things worth a line.
    ``checked``: the cursors of the snapshots compared with the log, oldest first.
    """

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    checked: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every trusted snapshot agrees with the log."""
        return not self.problems

    def lines(self) -> list[str]:
        """One printable line per finding: problems first, then notes."""
        found = [f"problem: {problem}" for problem in self.problems]
        if self.checked and self.ok:
            seqs = self.checked
            listed = (
                "seq " + ", ".join(map(str, seqs))
                if len(seqs) <= _DIFFS
                else f"{len(seqs)} of them, seq {seqs[0]} to {seqs[-1]}"
            )
            found.append(f"snapshots agree with the log: {listed}")
        found += [f"note: {note}" for note in self.notes]
        return found


class Pace:
    """Paces Python work on a background thread so that an event loop on another thread gets
    the GIL within about ``work`` seconds, not a switch interval (5 ms, and twice in one of
    the loop's turns: once for its timers, once for the tasks they wake).

    ``step()`` after each unit of work: once ``work`` seconds of it have run since the last
    rest, the thread sleeps ``rest`` seconds. A real sleep: the loop's thread, woken when the
    GIL is let go, takes it before this one wants it back (after ``time.sleep(0)`` it would
    not). The work takes about ``rest / work`` longer (a fifth); measured on this 2-core
    machine, a 10,000-event fold on a worker thread stalled a loop 6.4 to 11.5 ms unpaced and
    1.8 to 3 ms paced (``benchmarks/log_scale.py`` times it on a live engine).
    """

    __slots__ = ("_clock", "_since", "_sleep", "rest", "work")

    def __init__(
        self,
        work: float = 0.001,
        rest: float = 0.0002,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.work = work
        self.rest = rest
        self._clock = clock
        self._sleep = sleep
        self._since = clock()

    def step(self) -> None:
        """One unit of work done (a row folded): rest when the work has run ``work``."""
        if self._clock() - self._since >= self.work:
            self._sleep(self.rest)
            self._since = self._clock()


class Snapshots:
    """A store's snapshots of the fold; see the module docstring.

    ``every``: take a ``periodic`` snapshot every this many committed events, and a ``close``
    one when the store closes (None: neither; snapshots can still be taken and loaded).
    ``taken`` counts the snapshots this object saved.
    """

    def __init__(self, store: SnapshotStore, *, every: int | None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"snapshot_every must be at least 1 or None, got {every!r}")
        # Weak: the store owns this object; a store the program lets go of must be collectable
        # (its ``__del__`` closes it) without waiting for the cycle collector.
        self._store = weakref.ref(store)
        self.every = every
        self.taken = 0
        self._since = 0  # committed events since the last periodic snapshot began
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._warned: set[tuple[int, str]] = set()

    @property
    def store(self) -> SnapshotStore:
        """The store these snapshots belong to."""
        store = self._store()
        if store is None:
            raise EventLogError("the event store of these snapshots is gone")
        return store

    # -- the store's hooks ---------------------------------------------------------------

    def committed(self, count: int) -> None:
        """The writer committed ``count`` more events: every ``every`` of them, start one
        periodic snapshot on a thread of its own (never two at once). Cheap; never raises."""
        if self.every is None:
            return
        self._since += count
        if self._since < self.every or self._stop.is_set():
            return
        running = self._thread
        if running is not None and running.is_alive():
            return  # the next commit starts one once this one is done
        self._since = 0
        thread = threading.Thread(target=self._periodic, name="failover-log-snapshot", daemon=True)
        self._thread = thread
        thread.start()

    def at_close(self) -> None:
        """The store is closing (its writer has stopped, its connection is still open): stop
        a periodic snapshot under way, then take a ``close`` one if this store appended
        events. Never raises: a failure is logged and counted in the store's ``errors``."""
        self._stop.set()
        running = self._thread
        if running is not None and running is not threading.current_thread():
            running.join(_JOIN)
        store = self._store()
        if store is None:  # closed by its ``__del__``: a store let go of takes no snapshot
            return
        if self.every is None or store._appended == 0 or store._failing:
            return
        try:
            self.take("close")
        except Exception as exc:  # noqa: BLE001 - a snapshot never fails the close
            self._failed("close", exc)

    def _periodic(self) -> None:
        try:
            self.take("periodic")
        except _Stopped:
            pass
        except Exception as exc:  # noqa: BLE001 - a snapshot never fails the log
            self._failed("periodic", exc)

    def _failed(self, kind: str, exc: Exception) -> None:
        store = self._store()
        if store is None:
            return
        error = f"{kind} snapshot failed: {type(exc).__name__}: {exc}"
        store.last_error = error
        logger.error("event log {}: {}", store.location, error)
        # Counted last: whoever sees ``errors`` grow finds the error said and logged.
        store.errors += 1

    # -- taking --------------------------------------------------------------------------

    def take(self, kind: Kind | str = "periodic") -> int | None:
        """Fold the log from the latest valid snapshot to its last committed event and save
        that as a ``kind`` snapshot; its cursor, or None when no event came since the latest
        valid snapshot. Raises ``EventLogError`` (also when the base cannot be folded from)."""
        _check(kind)
        store = self.store
        upto = store.last_seq()
        stoppable = kind == "periodic" and threading.current_thread() is self._thread
        # The store's own work, beside an engine's event loop: paced.
        loading = Loading(self, upto, stoppable=stoppable, pace=Pace(), page=_RUN_PAGE)
        snap, cursor = loading.run()
        if cursor <= loading.start:
            return None
        self.save(snap, cursor, kind)
        return cursor

    def save(self, snapshot: Snapshot, cursor: int, kind: Kind | str) -> None:
        """Store ``snapshot`` as the fold of the log up to seq ``cursor``, then prune.

        A ``cut`` replaces whatever is at ``cursor``; another kind never replaces a cut (the
        cut says the same and more: the events before it are gone). ``EventLogError`` on
        failure.
        """
        _check(kind)
        row = (cursor, kind, FOLD_KEY, datetime.now(UTC).isoformat(), _encoder.encode(snapshot))
        insert = "INSERT INTO snapshots (cursor, kind, fold, at, body) VALUES (?, ?, ?, ?, ?)"
        if kind == "cut":
            statements = [("DELETE FROM snapshots WHERE cursor = ?", (cursor,)), (insert, row)]
        else:
            statements = [
                ("DELETE FROM snapshots WHERE cursor = ? AND kind <> 'cut'", (cursor,)),
                (insert + " ON CONFLICT (cursor) DO NOTHING", row),
            ]
        statements += [(sql, ()) for sql in _PRUNE]
        if kind in ("periodic", "close"):
            every = self.every or SNAPSHOT_EVERY
            statements.append((_THIN, (cursor, FOLD_KEY, every, cursor, every)))
        self.store.transaction(statements)
        self.taken += 1

    # -- loading -------------------------------------------------------------------------

    def load(
        self,
        upto: int | None = None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
    ) -> tuple[Snapshot, int]:
        """The fold of the log up to seq ``upto`` (default: all it holds now) and its cursor
        (the seq of the last event folded, or of the snapshot it started from).

        Starts from the latest valid snapshot at or before ``upto``; ``from_start`` from the
        base (the latest archive cut, or nothing). ``lenient``: skip rows that do not decode
        (counted in the store's ``skipped``). ``keep``: when the load folded ``every`` events
        or more, save the result as a ``periodic`` snapshot (what an engine's start-up does,
        so that the next one need not). Raises ``EventLogError`` when the events needed are
        archived (``upto`` before the cut, or a cut this version cannot trust).
        """
        loading = Loading(
            self, upto, from_start=from_start, lenient=lenient, keep=keep, page=_RUN_PAGE
        )
        return loading.run()

    def loading(
        self,
        upto: int | None = None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
    ) -> Loading:
        """``load`` in steps (``Loading``), for a caller that must keep its thread free: it
        reads the log on a worker thread and folds on its own, a bounded slice at a time."""
        return Loading(self, upto, from_start=from_start, lenient=lenient, keep=keep)

    def nearest(self, upto: int) -> int | None:
        """The cursor of the latest snapshot at or before seq ``upto`` that a load could start
        from (this version's fold, not before the latest cut); None when there is none. Reads
        the headers only: ``load(upto=cursor)`` then starts there (or, should its body not
        decode, from an earlier point)."""
        cut = self._cut()
        found = next(self._candidates(upto, _floor(cut)), None)
        if found is not None:
            return found.cursor
        if cut is not None and cut.cursor <= upto and cut.fold == FOLD_KEY:
            return cut.cursor
        return None

    def within(self, after: int, upto: int) -> list[int]:
        """The cursors of the snapshots a load could start from with ``after < cursor <=
        upto`` (this version's fold; neither a cut nor before the latest one), oldest first.
        Reads the headers only: ``at(cursor)`` reads one."""
        floor = max(after, _floor(self._cut()))
        where = "WHERE cursor > ? AND cursor <= ? AND kind <> 'cut' AND fold = ? ORDER BY cursor"
        return [row.cursor for row in self._rows(where, (floor, upto, FOLD_KEY))]

    def at(self, cursor: int) -> Snapshot | None:
        """The snapshot at ``cursor`` if this version trusts it (its fold, and it decodes);
        None otherwise (none there, another version's, damaged: said once)."""
        found = self._rows("WHERE cursor = ?", (cursor,))
        return self._trusted(found[0]) if found else None

    def _start(self, cut: _Row | None, upto: int, *, from_start: bool) -> tuple[Snapshot, int]:
        """Where a fold up to ``upto`` begins: the latest valid snapshot at or before it (not
        before the cut), else the base."""
        if cut is not None and cut.cursor > upto:
            raise EventLogError(
                f"event log {self.store.location}: the events up to seq {cut.cursor} are "
                f"archived{self._archives()}; the log cannot be folded up to seq {upto} here"
            )
        if not from_start:
            for row in self._candidates(upto, _floor(cut)):
                found = self._body(row)
                if found is not None:
                    self._ignore_stale(upto, row.cursor)
                    return found, row.cursor
            self._ignore_stale(upto, _floor(cut))
        if cut is None:
            return Snapshot(), 0
        base = self._trusted(cut, warn=False)
        if base is None:
            why = (
                "it does not decode"
                if cut.fold == FOLD_KEY
                else f"it was written by another version of the fold ({cut.fold}; this "
                f"version's is {FOLD_KEY})"
            )
            raise EventLogError(
                f"event log {self.store.location}: the events up to seq {cut.cursor} are "
                f"archived{self._archives()}, and the snapshot left at the cut cannot be "
                f"used: {why}. Fold the archives and this log together with the version that "
                "archived them, or replay them from the archives"
            )
        return base, cut.cursor

    # -- the rows ------------------------------------------------------------------------

    def _rows(self, where: str, params: Sequence[object]) -> list[_Row]:
        """The headers of the snapshots ``where`` selects (none for a log from before
        snapshots). A load reads a few: a log keeps one per ``every`` events."""
        if not self.store.has_snapshots:
            return []
        sql = f"SELECT cursor, kind, fold FROM snapshots {where}"  # noqa: S608 - constants only
        found = self.store.query(sql, params)
        return [_Row(int(cursor), str(kind), str(key)) for cursor, kind, key in found]

    def _cut(self) -> _Row | None:
        """The latest cut: the base of every fold (None: the log's first event is)."""
        found = self._rows("WHERE kind = 'cut' ORDER BY cursor DESC LIMIT 1", ())
        return found[0] if found else None

    def _candidates(self, upto: int, floor: int) -> Iterator[_Row]:
        """This fold's snapshots other than cuts with ``floor < cursor <= upto``, latest
        first, read ``_BATCH`` at a time."""
        where = (
            "WHERE cursor < ? AND cursor > ? AND kind <> 'cut' AND fold = ? "
            "ORDER BY cursor DESC LIMIT ?"
        )
        below = upto + 1
        while True:
            batch = self._rows(where, (below, floor, FOLD_KEY, _BATCH))
            yield from batch
            if len(batch) < _BATCH:
                return
            below = batch[-1].cursor

    def _headers(self) -> list[_Row]:
        """Every snapshot's header, latest first (what ``verify`` checks)."""
        return self._rows("ORDER BY cursor DESC", ())

    def _body(self, row: _Row) -> Snapshot | None:
        """The snapshot of ``row``; None when it is gone (pruned meanwhile) or damaged."""
        found = self.store.query("SELECT body FROM snapshots WHERE cursor = ?", (row.cursor,))
        if not found:
            return None
        try:
            return _decoder.decode(found[0][0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._ignore(row, f"it does not decode ({exc})")
            return None

    def _trusted(self, row: _Row, *, warn: bool = True) -> Snapshot | None:
        """``row``'s snapshot if this version's fold wrote it and it decodes, else None."""
        if row.fold != FOLD_KEY:
            if warn:
                self._ignore(row, _stale(row))
            return None
        return self._body(row)

    def _ignore_stale(self, upto: int, floor: int) -> None:
        """Say once that another fold's snapshots with ``floor < cursor <= upto`` were passed
        over: one line for them all (after an upgrade a log may hold one per ``every``
        events)."""
        where = "WHERE cursor <= ? AND cursor > ? AND kind <> 'cut' AND fold <> ? ORDER BY "
        rows = self._rows(where + "cursor DESC", (upto, floor, FOLD_KEY))
        if rows:
            more = f", as are {len(rows) - 1} earlier ones" if len(rows) > 1 else ""
            self._ignore(rows[0], _stale(rows[0]) + more)

    def _ignore(self, row: _Row, why: str) -> None:
        """Say once per snapshot that it is ignored."""
        if (row.cursor, row.fold) in self._warned:
            return
        self._warned.add((row.cursor, row.fold))
        logger.warning(
            "event log {}: ignoring the {} snapshot at seq {}: {}; folding from an earlier "
            "point instead",
            self.store.location,
            row.kind,
            row.cursor,
            why,
        )

    def _archives(self) -> str:
        """`` (in FILE (seq A-B), ...)`` from the archives a log records, else ``""``."""
        sql = "SELECT path, first_seq, last_seq FROM archives ORDER BY first_seq"
        try:
            found = self.store.query(sql)
        except EventLogError:
            return ""
        if not found:
            return ""
        return " (in " + ", ".join(f"{path} (seq {a}-{b})" for path, a, b in found) + ")"

    # -- verifying -----------------------------------------------------------------------

    def verify(self) -> SnapshotCheck:
        """Compare every snapshot this version trusts with the fold of the log from its base
        up to the snapshot's cursor; see ``SnapshotCheck``. Reads the log once. A row that
        does not decode, or a base that cannot be folded from, is a problem; ``EventLogError``
        only when the log cannot be read at all."""
        store = self.store
        headers = self._headers()
        notes: list[str] = []
        if not headers:
            return SnapshotCheck(notes=("no snapshot to check: loads fold the whole log",))
        cut = _latest_cut(headers)
        targets = self._targets(headers, cut, notes)
        end = max([store.last_seq()] + [row.cursor for row in headers])
        try:
            snap, start = self._start(cut, end, from_start=True)
        except EventLogError as exc:
            return SnapshotCheck(problems=(str(exc),), notes=tuple(notes))
        if not targets:
            notes.append("no snapshot of this version's fold to check")
            return SnapshotCheck(notes=tuple(notes))
        problems: list[str] = []
        checked: list[int] = []
        pending = iter(targets)
        target = next(pending, None)
        events = store.read(after=start, where="seq <= ?", params=(targets[-1].cursor,))
        try:
            for event in _with_end(events):
                while target is not None and (event is None or event.seq > target.cursor):
                    # One body decoded at a time: a log keeps a snapshot per ``every`` events.
                    stored = self._decoded(target, notes)
                    if stored is not None:
                        checked.append(target.cursor)
                        problems += _disagreement((target.cursor, target.kind, stored), snap)
                    target = next(pending, None)
                if event is not None:
                    apply(snap, event)
        except EventLogError as exc:  # a damaged row: the log cannot vouch for what follows
            problems.append(f"the log cannot be folded from its base: {exc}")
        return SnapshotCheck(tuple(problems), tuple(notes), tuple(checked))

    def _decoded(self, row: _Row, notes: list[str]) -> Snapshot | None:
        """``row``'s body for ``verify``; None, and a note, when it does not decode."""
        found = self.store.query("SELECT body FROM snapshots WHERE cursor = ?", (row.cursor,))
        if not found:  # a later snapshot of its stretch replaced it while the log was read
            notes.append(f"the {row.kind} snapshot at seq {row.cursor} was pruned meanwhile")
            return None
        try:
            return _decoder.decode(found[0][0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            notes.append(
                f"ignored: the {row.kind} snapshot at seq {row.cursor}: it does not decode ({exc})"
            )
            return None

    def _targets(self, headers: list[_Row], cut: _Row | None, notes: list[str]) -> list[_Row]:
        """The snapshots ``verify`` compares with the log, oldest first; a note for each
        other one."""
        targets: list[_Row] = []
        stale: list[_Row] = []
        for row in sorted(headers, key=lambda r: r.cursor):
            if row.kind == "cut":
                if row is cut:
                    notes.append(
                        f"the cut at seq {row.cursor} is the base (the events before it are "
                        "archived): it is checked against its archive, not here"
                    )
                continue
            if cut is not None and row.cursor < cut.cursor:
                notes.append(f"the {row.kind} snapshot at seq {row.cursor} is before the cut")
                continue
            if row.fold != FOLD_KEY:
                stale.append(row)
                continue
            targets.append(row)
        if len(stale) == 1:
            notes.append(
                f"ignored: the {stale[0].kind} snapshot at seq {stale[0].cursor}: "
                f"{_stale(stale[0])}"
            )
        elif stale:  # after an upgrade, one per ``every`` events: one line for them all
            keys = ", ".join(sorted({row.fold for row in stale}))
            notes.append(
                f"ignored: {len(stale)} snapshots (seq {stale[0].cursor} to {stale[-1].cursor}) "
                f"written by another version of the fold ({keys}; this version's is {FOLD_KEY})"
            )
        return targets


class Loading:
    """One load of the fold up to a seq, in steps (``Snapshots.loading``).

    ``begin``, ``read`` and ``finish`` touch the log: a caller on an event loop runs them on
    a worker thread. ``fold`` decodes and folds the rows ``read`` fetched and touches nothing
    else: the caller runs it on its own thread, a time budget at a time, and the loop runs
    between slices. (Decoding and folding are Python's work: on a worker thread they would
    hold the GIL against the loop, which then waits up to a switch interval, 5 ms, for it,
    twice in one turn.) The steps:

    - ``begin``: find where the fold starts (the latest snapshot it may start from);
    - ``read``, then ``fold`` until it says all is folded, again until ``read`` says False;
    - ``finish``: the fold and its cursor, or None when an archive cut the log meanwhile
      (the events between the start and the new cut were missed): ``begin`` again, from the
      new base. ``begin`` raises ``EventLogError`` after a few of those.

    ``run`` takes every step at once, on the caller's thread (``Snapshots.load``).
    """

    def __init__(
        self,
        owner: Snapshots,
        upto: int | None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
        stoppable: bool = False,
        pace: Pace | None = None,
        page: int = _PAGE,
    ) -> None:
        self._owner = owner
        self._pace = pace
        self._page = page
        self._upto = upto
        self._from_start = from_start
        self._lenient = lenient
        self._keep = keep
        self._stoppable = stoppable
        self._attempts = 0
        self._reader: RowReader | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._index = 0
        self._last = 0  # the last seq fetched
        self._more = False
        self.snap = Snapshot()
        self.start = 0  # the cursor of the snapshot the fold began from (0: nothing)
        self.cursor = 0  # the seq of the last event folded (``start`` before any)

    def begin(self) -> None:
        """Find where the fold starts; ``EventLogError`` when it cannot (the events wanted
        are archived), or after an archive cut the log again and again while it was read."""
        if self._attempts == _ATTEMPTS:
            raise EventLogError(
                f"event log {self._owner.store.location}: archived again and again while it "
                "was read; try again once the archive is done"
            )
        self._attempts += 1
        owner = self._owner
        store = owner.store
        store.flush()
        cut = owner._cut()
        end = store.last_seq() if self._upto is None else self._upto
        if cut is not None and end < cut.cursor and store.last_seq() <= end:
            end = cut.cursor  # an archive moved every event: the cut is the log's end
        self.snap, self.start = owner._start(cut, end, from_start=self._from_start)
        self.cursor = self._last = self.start
        self._more = end > self.start
        self._rows, self._index = [], 0
        self._reader = store.reader(
            where="seq <= ?", params=(end,), lenient=self._lenient, page=self._page
        )

    def read(self) -> bool:
        """Fetch the next rows to fold; False when every row is folded (none are left)."""
        reader = self._reader
        if reader is None or not self._more:
            return False
        rows = reader.fetch(self._last)
        self._more = len(rows) == self._page
        if rows:
            self._last = int(rows[-1][0])
        self._rows, self._index = rows, 0
        return bool(rows)

    def fold(self, budget: float | None = None) -> bool:
        """Decode and fold the rows fetched, for about ``budget`` seconds at most (None: all
        of them); True once they are all folded. Raises what decoding raises."""
        reader, rows, index = self._reader, self._rows, self._index
        if reader is None:
            return True
        deadline = None if budget is None else time.perf_counter() + budget
        stop = self._owner._stop if self._stoppable else None
        pace = self._pace
        while index < len(rows):
            event = reader.decode(rows[index])
            index += 1
            if event is not None:
                apply(self.snap, event)
                self.cursor = event.seq
            if pace is not None:
                pace.step()
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if stop is not None and index % _STOP_EVERY == 0 and stop.is_set():
                raise _Stopped  # the store is closing: the periodic snapshot gives up
        self._index = index
        return index >= len(rows)

    def finish(self) -> tuple[Snapshot, int] | None:
        """The fold and its cursor; None when an archive moved the base meanwhile (``begin``
        again). With ``keep``, a fold of ``every`` events or more is saved as a ``periodic``
        snapshot, so that the next load need not fold them (a failure to save is logged)."""
        owner = self._owner
        self.close()
        moved = owner._cut()
        if moved is not None and moved.cursor > self.start:
            return None
        every = owner.every
        if (
            self._keep
            and not self._from_start
            and every is not None
            and self.cursor - self.start >= every
        ):
            try:
                owner.save(self.snap, self.cursor, "periodic")
            except EventLogError as exc:
                logger.warning("event log {}: snapshot not saved: {}", owner.store.location, exc)
        return self.snap, self.cursor

    def close(self) -> None:
        """The load is over, however it ended: one warning for the events of types this
        version does not know that it skipped (the store counts each once: unsaid now, they
        would never be)."""
        if self._reader is not None:
            self._reader.done()

    def run(self) -> tuple[Snapshot, int]:
        """Every step, on this thread: the fold and its cursor."""
        try:
            while True:
                self.begin()
                while self.read():
                    self.fold()
                done = self.finish()
                if done is not None:
                    return done
        finally:
            self.close()


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a snapshot's kind is one of {', '.join(KINDS)}, got {kind!r}")


def _floor(cut: _Row | None) -> int:
    """The cursor a load's snapshot must be after: the cut's (-1: none)."""
    return -1 if cut is None else cut.cursor


def _latest_cut(headers: list[_Row]) -> _Row | None:
    return next((row for row in headers if row.kind == "cut"), None)


def _stale(row: _Row) -> str:
    return f"written by another version of the fold ({row.fold}; this version's is {FOLD_KEY})"


def _with_end(events: Iterator[Event]) -> Iterator[Event | None]:
    yield from events
    yield None


def _disagreement(target: tuple[int, str, Snapshot], folded: Snapshot) -> list[str]:
    cursor, kind, stored = target
    if stored == folded:
        return []
    differences = list(_differences(msgspec.to_builtins(stored), msgspec.to_builtins(folded)))
    shown = "; ".join(differences[:_DIFFS])
    more = f" (and {len(differences) - _DIFFS} more)" if len(differences) > _DIFFS else ""
    return [
        f"the {kind} snapshot at seq {cursor} disagrees with the fold of the log: {shown}{more}"
    ]


def _differences(stored: object, folded: object, path: str = "") -> Iterator[str]:
    """Where two snapshots (as builtins) differ: ``path is A in the snapshot, B in the log``."""
    if isinstance(stored, dict) and isinstance(folded, dict):
        for key in sorted(stored.keys() | folded.keys(), key=str):
            where = f"{path}.{key}" if path else str(key)
            yield from _differences(stored.get(key), folded.get(key), where)
    elif isinstance(stored, list) and isinstance(folded, list) and len(stored) == len(folded):
        for index, (a, b) in enumerate(zip(stored, folded, strict=True)):
            yield from _differences(a, b, f"{path}[{index}]")
    elif stored != folded:
        yield f"{path} is {_short(stored)} in the snapshot, {_short(folded)} in the log"


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
