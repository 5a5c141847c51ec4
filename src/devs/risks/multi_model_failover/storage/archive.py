"""Archiving: the old events of a live log moved into an archive log, a snapshot left at the cut.

``archive(store, before=..., to=...)`` moves the events older than ``before`` out of a live log
(SQLite or PostgreSQL) into an archive file, an ordinary SQLite event log that every command
and ``replay`` reads, keeping each event's ``seq``, writer and content. The live log keeps a
``cut`` snapshot at the last moved ``seq``, so its totals, states and ``replay`` stay exactly
what they were, and it records the archive in its table ``archives``.

**The cut.** The events moved are the longest run of the live log's first events (in ``seq``
order) that are all older than ``before``: the cut is the ``seq`` just before the first event
at or after ``before``. Events are stamped before they are committed, so a few may be out of
time order across writers; an older event behind a newer one stays in the live log (the next
archive takes it). So an archive never holds an event at or after ``before``, and the live log
holds every event from ``before`` on: a question about a time from ``before`` on needs no
archive, and a replica whose clock lags cannot drag recent events out.

**Order of the steps, and a crash.** Each step commits before the next starts:

1. the events are copied into the archive file, a slice per transaction, each slice followed
   by the archive's ``archive`` snapshot when it ends at a multiple of N (below);
2. the archive gets a snapshot at its last ``seq`` (``replay(archive)`` starts there);
3. the live log records the archive (``archives``: path, seq range, time range);
4. the live log gets the ``cut`` snapshot;
5. the moved events are deleted from the live log, a short transaction per slice
   (``DELETE_SLICE`` rows: engines appending meanwhile wait milliseconds, not seconds);
6. the space is given back (the snapshots below the cut went with step 4: ``Snapshots.save``
   prunes them).

A run stopped anywhere (a crash, a kill, ``stop``) loses nothing: every event is in the live
log, in the archive file, or in both. Run again with the same ``to``, it completes the work
without copying an event twice: an archive file that already holds the next events of this
log (checked: the same events) is continued from its last ``seq``, and a range the live log
recorded as archived but still holds (steps 4 and 5) is cut and deleted first, whatever ``to``
says. An archive file that a stopped run left before step 3 and that is then abandoned for
another file holds copies that no record names: it is not part of the log's history.

**The copy, and the event loop.** Archiving runs on a worker thread; what held the event loop
up was the worker holding the GIL: whole slices of events decoded into lists and encoded again.
From an SQLite log (row format 2) SQLite now copies the rows itself, byte for byte, with one
``INSERT ... SELECT`` per slice through a connection of our own with the archive attached (the
sqlite3 module lets go of the GIL while a statement runs; the live log is only read). The fold
that the cut needs reads the same rows one at a time (only those after the live log's last
snapshot, see below), so no list of events is kept, and the fold rests now and then
(``snapshots.Pace``) so that an event loop beside it gets the GIL within about a millisecond.
Measured here (2 cores shared with other jobs, so noisy), archiving half of a 1M-event log on
a worker thread: the loop's longest stall 7.6, 7.6 and 5.5 ms in three runs at 68,000 to
76,000 events/s on 2026-12-01, 7 to 32 ms at 65,000 to 69,000 events/s on a noisier
2026-12-02, with the live log's snapshots as anchors (6 to 24 ms, median 14, at about 45,000
events/s when every event moved was folded). The fold is then about 1 ms of the run; the
longest stalls fall in the deletes, in SQLite's C code without the GIL, and the same deletes
from another process stall a loop as much: the machine, not the GIL.
PostgreSQL, an in-memory or an older-format log: through the stores, as before (each event
decoded and written again).

**The archive's snapshots.** The live log keeps a periodic snapshot per N events (N being
the live store's ``snapshot_every``, or ``SNAPSHOT_EVERY`` when it takes none): those of the
events moved go into the archive as ``archive`` snapshots, and the events up to each are copied
unread; only the events after the last one are folded for the cut. A stretch of more than 2N
events without one is folded as it is copied, the archive getting a snapshot at each multiple
of N in it (see ``_Copying``). Never pruned: a question about an instant inside the archive
folds at most about N events past one (``adapters/cli/archived.py``). A rerun adds the
snapshots a stopped run left out.

**Appending.** An archive file continues: its events must end just before the ones added
(the same log: its ``meta`` names the log in ``archive_of``). A file that is not an event log,
an event log that is no archive, the archive of another log, or one that would leave a gap is
refused with ``ArchiveError`` before anything changes. A new archive of a log cut before gets
the snapshot of everything before its first event, so it replays to the same totals as the
log did at its last event.

**Space.** SQLite: a log created with ``auto_vacuum=INCREMENTAL`` (every log since row format
2) gives the freed pages back with ``PRAGMA incremental_vacuum``, ``VACUUM_PAGES`` pages per
statement; an older log is rewritten once with ``VACUUM`` (which also turns incremental
auto-vacuum on, so the next archive is cheap); writers wait while it runs (it holds the write
lock for the whole rewrite, about 1.5 s per 100 MB that stays in the log here) and retry.
Then the WAL is checkpointed so that the file shrinks at once. Measured here on 300,000
events: 21,000 to 36,000 events/s archived, each delete slice 5 to 10 ms, 42 MB down to
1.6 MB. PostgreSQL: ``VACUUM`` on the events table makes the space reusable for new events
(the table does not shrink on disk: ``VACUUM FULL`` would lock out every writer for its
duration, which we never do).

**One archiver at a time.** Two runs on one log at once would each copy the same events into
their own files (nothing lost, but two copies); in a fleet sharing a PostgreSQL log, give
``retention`` to one replica only, or archive from one cron job.

A row this version cannot read (a newer version's event type, a damaged row) in a stretch the
archive folds, or on the generic path (which writes what it decoded), stops the archive before
anything is deleted: it would otherwise be lost with no copy. In a stretch copied unread (up to
a live snapshot, on the SQLite path) it moves byte for byte, for the version that wrote it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from loguru import logger

from ..core.errors import EventLogError
from ..core.events import Event
from ..core.projections import Snapshot, apply
from ._group_commit import GroupCommitStore
from .snapshots import SNAPSHOT_EVERY, Loading, Pace
from .sqlite import MEMORY, SQLiteEventStore, write_transaction

ARCHIVES_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS archives (path text NOT NULL, first_seq bigint NOT NULL, "
    "last_seq bigint NOT NULL, first_at text NOT NULL, last_at text NOT NULL, "
    "archived_at text NOT NULL)"
)
COPY_SLICE: Final = 5_000  # events per archive transaction
DELETE_SLICE: Final = 2_000  # rows per delete transaction in the live log (5 to 10 ms here)
VACUUM_PAGES: Final = 2_000  # pages given back per ``incremental_vacuum`` statement
_INCREMENTAL: Final = 2  # PRAGMA auto_vacuum
_MAX_PAUSE: Final = 0.05  # the longest rest between two slices (seconds)
ARCHIVE_WRITER: Final = "archive"  # the archive store's own name (it writes no event itself)


class ArchiveError(EventLogError):
    """An archive that cannot be made as asked (the target is not an archive of this log, it
    would leave a gap, the folder is missing); nothing was changed."""


@dataclass(frozen=True)
class ArchiveRecord:
    """One archive run, as the live log's ``archives`` table records it: the events with
    ``first_seq`` to ``last_seq`` (their times from ``first_at`` to ``last_at``) are in the
    SQLite file ``path`` (absolute, as it was when archived)."""

    path: str
    first_seq: int
    last_seq: int
    first_at: datetime
    last_at: datetime
    archived_at: datetime


@dataclass(frozen=True)
class ArchiveResult:
    """What one ``archive`` call did.

    ``moved``: events deleted from the live log (each one is in an archive file);
    ``copied``: events written into ``archive``; ``first_seq``/``last_seq``: the range this
    run archived (None when there was nothing to move); ``cut``: the live log's cut now (the
    last archived ``seq``, 0 if never cut); ``size_before``/``size_after``: the live log on
    disk in bytes (the SQLite file and its WAL; PostgreSQL: the events table with its indexes;
    None in memory); ``space``: how the space was given back; ``seconds``: wall time;
    ``complete``: False when ``stop`` ended the run early (run again to finish).
    """

    archive: str
    moved: int
    copied: int
    first_seq: int | None
    last_seq: int | None
    cut: int
    size_before: int | None
    size_after: int | None
    space: str
    seconds: float
    complete: bool = True


def _never() -> bool:
    return False


def archive(
    store: GroupCommitStore,
    *,
    before: datetime,
    to: str | os.PathLike[str],
    stop: Callable[[], bool] | None = None,
) -> ArchiveResult:
    """Move the live log's events older than ``before`` into the SQLite archive file ``to``;
    see the module docstring for which events, the order of the steps and what a crash does.

    ``to``'s folder must exist; the file is created (mode 0600) or continued. ``stop`` is
    asked between slices: once it returns True the run ends early, consistent, and says so
    in ``complete``. Blocking (run it on a worker thread from async code). Raises
    ``ArchiveError`` for a target that cannot be used (nothing changed), ``EventLogError``
    when a log cannot be read or written (the steps committed so far stand; run again).
    """
    started = time.monotonic()
    should_stop = stop or _never
    path = _target(store, to)
    if not store.has_snapshots:
        raise ArchiveError(
            f"cannot archive {store.location}: it has no snapshots table yet (a log from an "
            "older version opened read-only); open it to write (create=True)"
        )
    size_before = log_size(store)
    store.transaction(
        [
            (ARCHIVES_TABLE, ()),
            # What names the log in its archives (PostgreSQL logs and old SQLite ones had none).
            (
                "INSERT INTO meta (key, value) VALUES ('log_id', ?) ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(8),),
            ),
        ]
    )
    moved, finished = _finish_recorded(store, should_stop)
    if not finished or should_stop():
        return _result(store, path, moved, 0, None, size_before, started, complete=False)
    first = _scalar(store, "SELECT min(seq) FROM events")
    cut = cut_before(store, before)
    if first is None or (cut < first and not path.exists()):
        space = _give_back(store) if moved else "nothing freed"
        return _result(store, path, moved, 0, None, size_before, started, space=space)
    base = _snapshot_at(store, first - 1) if first > 1 else Snapshot()
    with _open_archive(path) as target:
        held = _continue(target, store, path, first, base)
        cut = max(cut, held)
        if cut < first:
            space = _give_back(store) if moved else "nothing freed"
            return _result(store, path, moved, 0, None, size_before, started, space=space)
        # The fold up to the cut comes with the copy: from the live log's last snapshot
        # before it, or folded from the base where the log has none (see ``_Copying``).
        copied, snap = _copy(store, target, first - 1, cut, should_stop, base)
        if snap is None:
            return _result(store, path, moved, copied, None, size_before, started, complete=False)
        # Not a cut: the archive holds the events up to it. Its replay starts here. Of kind
        # ``archive``, never pruned: it stays when a later run continues the file.
        target.snapshots.save(snap, cut, "archive")
        _record(store, target, path, first, cut)
    store.snapshots.save(snap, cut, "cut")
    deleted, done = _delete(store, first, cut, should_stop)
    moved += deleted
    if not done:
        return _result(
            store, path, moved, copied, (first, cut), size_before, started, complete=False
        )
    space = _give_back(store)
    return _result(store, path, moved, copied, (first, cut), size_before, started, space=space)


def _result(
    store: GroupCommitStore,
    path: Path,
    moved: int,
    copied: int,
    span: tuple[int, int] | None,
    size_before: int | None,
    started: float,
    *,
    complete: bool = True,
    space: str = "not yet given back",
) -> ArchiveResult:
    return ArchiveResult(
        archive=str(path),
        moved=moved,
        copied=copied,
        first_seq=span[0] if span else None,
        last_seq=span[1] if span else None,
        cut=cut_of(store),
        size_before=size_before,
        size_after=log_size(store),
        space=space,
        seconds=time.monotonic() - started,
        complete=complete,
    )


# -- reading the live log ----------------------------------------------------------------------


def _scalar(store: GroupCommitStore, sql: str, params: Sequence[object] = ()) -> Any:
    rows = store.query(sql, params)
    return rows[0][0] if rows else None


def cut_before(store: GroupCommitStore, before: datetime) -> int:
    """The cut that moves the log's events older than ``before``: the ``seq`` just before its
    first event at or after ``before`` (every event, when none is), pinned to the events
    stored now. One indexed look-up."""
    last = store.last_seq()
    newer = _scalar(store, "SELECT min(seq) FROM events WHERE at >= ?", (store.at_param(before),))
    return last if newer is None else min(last, int(newer) - 1)


def _has_table(store: GroupCommitStore, name: str) -> bool:
    if isinstance(store, SQLiteEventStore):
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
        return bool(_scalar(store, sql, (name,)))
    return _scalar(store, "SELECT to_regclass(?) IS NOT NULL", (name,)) is True


def records(store: GroupCommitStore) -> list[ArchiveRecord]:
    """The archives the log recorded, oldest first (none for a log never archived)."""
    if not _has_table(store, "archives"):
        return []
    rows = store.query(
        "SELECT path, first_seq, last_seq, first_at, last_at, archived_at FROM archives "
        "ORDER BY last_seq, archived_at"
    )
    return [
        ArchiveRecord(
            path=path,
            first_seq=int(first),
            last_seq=int(last),
            first_at=datetime.fromisoformat(first_at),
            last_at=datetime.fromisoformat(last_at),
            archived_at=datetime.fromisoformat(archived_at),
        )
        for path, first, last, first_at, last_at, archived_at in rows
    ]


def cut_of(store: GroupCommitStore) -> int:
    """The log's cut: the last ``seq`` it recorded as archived (0: never archived)."""
    if not _has_table(store, "archives"):
        return 0
    found = _scalar(store, "SELECT max(last_seq) FROM archives")
    return 0 if found is None else int(found)


def log_identity(store: GroupCommitStore) -> str:
    """What names the log in its archives' ``meta`` (``archive_of``): its ``log_id`` (the
    first archive gives a log without one its own), else its location."""
    found = _scalar(store, "SELECT value FROM meta WHERE key = 'log_id'")
    return str(found) if found is not None else store.location


def archive_of(archive_store: GroupCommitStore) -> str | None:
    """The identity of the log ``archive_store`` is an archive of (None: not an archive)."""
    found = _scalar(archive_store, "SELECT value FROM meta WHERE key = 'archive_of'")
    return None if found is None else str(found)


def read_rows(store: GroupCommitStore, *, after: int, upto: int) -> list[tuple[Event, str]]:
    """The events with ``after < seq <= upto``, oldest first, each with its writer's name.

    A row this version cannot read raises ``EventLogError`` naming its ``seq``.
    """
    return store.read_written(after=after, upto=upto)


# -- the archive file --------------------------------------------------------------------------


def _target(store: GroupCommitStore, to: str | os.PathLike[str]) -> Path:
    """The archive's absolute path; ``ArchiveError`` when it cannot be one."""
    text = os.fspath(to)
    if not text.strip() or text == MEMORY:
        raise ArchiveError(f"no archive file named: the path is {text!r}")
    path = Path(text).absolute()
    if not path.parent.is_dir():
        raise ArchiveError(
            f"cannot archive to {path}: the folder {path.parent} does not exist (create it first)"
        )
    if path.exists() and not path.is_file():
        raise ArchiveError(f"cannot archive to {path}: it is not a regular file")
    if isinstance(store, SQLiteEventStore) and store.path != MEMORY and path.exists():
        with contextlib.suppress(OSError):
            if path.samefile(store.path):
                raise ArchiveError(f"cannot archive {store.path} into itself: choose another file")
    return path


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[SQLiteEventStore]:
    try:
        target = SQLiteEventStore(path, create=True, writer=ARCHIVE_WRITER, snapshot_every=None)
    except EventLogError as exc:
        raise ArchiveError(f"cannot archive to {path}: {exc}") from exc
    try:
        yield target
    finally:
        target.close()


def _continue(
    target: SQLiteEventStore, store: GroupCommitStore, path: Path, first: int, base: Snapshot
) -> int:
    """Check that ``target`` may take the live log's events from ``first`` on; returns the
    last of them it holds already (``first - 1`` when none: a new archive, or one that ends
    just before them). A new archive is named this log's, with ``base`` (the fold of the
    events before ``first``) as its cut."""
    identity = log_identity(store)
    last = _scalar(target, "SELECT max(seq) FROM events")
    if last is None:  # new (or empty): ours from now on, with what came before as a snapshot
        _refuse_a_live_log(target, path, identity)
        target.transaction(
            [
                ("DELETE FROM snapshots", ()),
                ("DELETE FROM meta WHERE key = 'archive_of'", ()),
                ("INSERT INTO meta (key, value) VALUES ('archive_of', ?)", (identity,)),
            ]
        )
        if first > 1:
            target.snapshots.save(base, first - 1, "cut")
        return first - 1
    owner = archive_of(target)
    if owner is None:
        raise ArchiveError(
            f"cannot archive to {path}: it is an event log, not an archive; choose another file"
        )
    if owner != identity:
        raise ArchiveError(
            f"cannot archive to {path}: it is the archive of another log ({owner}), "
            f"not of {store.location}"
        )
    last = int(last)
    if last < first - 1:
        elsewhere = [r.path for r in records(store) if r.last_seq > last and r.first_seq < first]
        where = f" (they are in {', '.join(dict.fromkeys(elsewhere))})" if elsewhere else ""
        raise ArchiveError(
            f"cannot archive to {path}: it ends at seq {last}, but {store.location} now starts "
            f"at seq {first}; it would leave seq {last + 1} to {first - 1} out{where}. "
            "Archive to a new file"
        )
    if last >= first and read_rows(target, after=last - 1, upto=last) != read_rows(
        store, after=last - 1, upto=last
    ):
        raise ArchiveError(
            f"cannot archive to {path}: its events up to seq {last} are not the ones "
            f"{store.location} holds; it is not an archive of this log"
        )
    return last


def _refuse_a_live_log(target: SQLiteEventStore, path: Path, identity: str) -> None:
    """An event log with no event may still be a live log whose events were all archived
    (it holds a cut, records of its archives): never an archive to overwrite."""
    owner = archive_of(target)
    if owner is not None and owner != identity:
        raise ArchiveError(
            f"cannot archive to {path}: it is the archive of another log ({owner}), not of this one"
        )
    if owner is None and (
        _scalar(target, "SELECT count(*) FROM snapshots") or tuple(records(target))
    ):
        raise ArchiveError(
            f"cannot archive to {path}: it is an event log (its events are archived), "
            "not an archive; choose another file"
        )


def _copy(
    store: GroupCommitStore,
    target: SQLiteEventStore,
    after: int,
    upto: int,
    stop: Callable[[], bool],
    folding: Snapshot,
) -> tuple[int, Snapshot | None]:
    """Copy the live events ``after < seq <= upto`` that ``target`` does not hold yet, with
    the snapshots the archive keeps; ``folding`` is the fold up to ``after``. Returns how many
    were copied and the fold up to ``upto`` (None when ``stop`` ended it early). See
    ``_Copying``."""
    held = _scalar(target, "SELECT max(seq) FROM events")
    copying = _Copying(
        store=store,
        target=target,
        snap=folding,
        held=after if held is None else max(after, int(held)),
        every=store.snapshots.every or SNAPSHOT_EVERY,
        stop=stop,
    )
    return copying.run(after, upto)


@dataclass
class _Copying:
    """Copies a live log's events into its archive, a slice per transaction, with the
    snapshots that let a later question about an instant in the archive fold at most about
    ``every`` events past one.

    The live log keeps a periodic snapshot per ``every`` events (``storage.snapshots``): each
    one in the range is an *anchor*. The events up to an anchor no more than ``2 * every``
    past the last one are copied without being read by Python (SQLite copies the rows byte
    for byte), and the anchor goes into the archive as an ``archive`` snapshot: the worker's
    Python work no longer grows with the range. The events after the last anchor, and any
    longer stretch without one (a log written before snapshots were kept, or by a store that
    takes none), are folded into ``snap`` as they are copied, the archive getting an
    ``archive`` snapshot at every multiple of ``every`` in them.

    The events up to ``held`` are in the archive already (a stopped run copied them): they
    are not copied again, and the snapshots they lack are added.

    Per slice: fold when folding (so a row this version cannot read stops the run before it
    is copied), copy, then the snapshot at the slice's end when it is due (a run stopped
    between the two leaves it out; the next run adds it). A slice never crosses an anchor or
    a multiple of ``every``.
    """

    store: GroupCommitStore
    target: SQLiteEventStore
    snap: Snapshot
    held: int
    every: int
    stop: Callable[[], bool]
    # The fold is Python's work on the archive's thread, beside an engine's event loop.
    pace: Pace = field(default_factory=Pace)

    def run(self, after: int, upto: int) -> tuple[int, Snapshot | None]:
        """Copy the events ``after < seq <= upto``; see ``_copy``."""
        anchors = self.store.snapshots.within(after, upto)
        with self._source() as conn:
            copied = 0
            for anchor in [*anchors, None]:
                end = upto if anchor is None else anchor
                # A stretch to an anchor is copied unread when the anchor can be trusted.
                found = None if end - after > 2 * self.every else self._anchor(anchor)
                count, done = self._stretch(conn, after, end, found)
                copied += count
                after = end
                if not done or (after < upto and self.stop()):
                    return copied, None
            return copied, self.snap

    def _anchor(self, cursor: int | None) -> Snapshot | None:
        """The live log's snapshot at ``cursor`` (None: none, or not trusted)."""
        return None if cursor is None else self.store.snapshots.at(cursor)

    def _stretch(
        self, conn: sqlite3.Connection | None, after: int, upto: int, anchor: Snapshot | None
    ) -> tuple[int, bool]:
        """Copy ``after < seq <= upto``, a slice at a time: unread when ``anchor`` (the fold
        up to ``upto``) is given, which then becomes ``snap`` and the archive's snapshot there;
        else folding into ``snap``. Returns how many were copied, and False when ``stop``
        ended it early."""
        fold = anchor is None
        copied = 0
        while after < upto:
            due = (after // self.every + 1) * self.every
            high = min(upto, after + COPY_SLICE, due if fold else upto)
            if conn is None:
                copied += self._generic_slice(after, high, fold=fold)
            else:
                copied += self._sql_slice(conn, after, high, fold=fold)
            after = high
            if fold and high == due:
                self._keep(self.snap, due)
            if after < upto and self.stop():
                return copied, False
        if anchor is not None:
            self._keep(anchor, upto)
            self.snap = anchor
        return copied, True

    def _keep(self, snap: Snapshot, cursor: int) -> None:
        """Give the archive an ``archive`` snapshot at ``cursor`` unless it has one."""
        found = self.target.query("SELECT count(*) FROM snapshots WHERE cursor = ?", (cursor,))
        if not found[0][0]:
            self.target.snapshots.save(snap, cursor, "archive")

    @contextlib.contextmanager
    def _source(self) -> Iterator[sqlite3.Connection | None]:
        """A connection of our own to the live SQLite file with the archive attached (None:
        the generic path, through the stores: PostgreSQL, an in-memory log, the older row
        format, whose rows are rewritten in the archive's format)."""
        store, target = self.store, self.target
        if not (
            isinstance(store, SQLiteEventStore)
            and store.path != MEMORY
            and store.compact
            and target.compact
        ):
            yield None
            return
        try:
            conn = sqlite3.connect(
                store.path, isolation_level=None, timeout=max(store.lock_timeout, 5.0)
            )
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read event log {store.path}: {exc}") from exc
        try:
            # As the archive store's own connection writes it (durability ``process``).
            conn.execute("ATTACH DATABASE ? AS arch", (target.path,))
            conn.execute("PRAGMA arch.synchronous = NORMAL")
            yield conn
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot copy into archive {target.path}: {exc}") from exc
        finally:
            conn.close()

    def _sql_slice(self, conn: sqlite3.Connection, after: int, high: int, *, fold: bool) -> int:
        """One slice on the SQLite path: when folding, each row folded as it is read (no list
        of events, so nothing lives long enough to reach the old generations of the garbage
        collector); then the rows copied file to file by SQLite itself, byte for byte, in one
        statement (the sqlite3 module lets go of the GIL while it runs: the event loop is not
        held up)."""
        count = self._fold_rows(conn, after, high) if fold else None
        if high <= self.held:
            return 0
        low = max(after, self.held)
        expected = count if count is not None and low == after else _count(conn, low, high)
        return _copy_rows(conn, low, high, expected)

    def _fold_rows(self, conn: sqlite3.Connection, after: int, high: int) -> int:
        """Fold the live rows ``after < seq <= high`` into ``snap``; how many there were."""
        read = conn.execute(_READ_SLICE.format(columns=self.store.event_columns), (after, high))
        news: Counter[str] = Counter()
        count = 0
        pace = self.pace
        for row in read:
            event = self.store._decode(row, lenient=False, news=news, skip_unknown=False)
            if event is not None:  # never None when nothing is skipped; for the type checker
                apply(self.snap, event)
                count += 1
            pace.step()
        return count

    def _generic_slice(self, after: int, high: int, *, fold: bool) -> int:
        """One slice through the stores: read (decoded), folded when folding, written."""
        pairs = read_rows(self.store, after=after, upto=high)
        if fold:
            for event, _ in pairs:
                apply(self.snap, event)
        fresh = [pair for pair in pairs if pair[0].seq > self.held]
        if fresh:
            self.target.write_events(fresh)
        return len(fresh)


_READ_SLICE: Final = "SELECT {columns} FROM main.events WHERE seq > ? AND seq <= ? ORDER BY seq"
# The writers of the slice's rows, by name (the archive numbers its writers its own way).
_COPY_WRITERS: Final = (
    "INSERT OR IGNORE INTO arch.writers (name) SELECT name FROM main.writers WHERE id IN "
    "(SELECT writer FROM main.events WHERE seq > ? AND seq <= ?)"
)
# LEFT JOIN: a row whose writer the log does not name fails the NOT NULL constraint (and the
# run) instead of being left out.
_COPY_SLICE_SQL: Final = (
    "INSERT INTO arch.events (seq, type, at, call_id, model_id, writer, body) "
    "SELECT e.seq, e.type, e.at, e.call_id, e.model_id, a.id, e.body FROM main.events AS e "
    "LEFT JOIN main.writers AS w ON w.id = e.writer LEFT JOIN arch.writers AS a ON a.name = w.name "
    "WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq"
)


def _copy_rows(conn: sqlite3.Connection, after: int, high: int, expected: int) -> int:
    """Copy the live rows ``after < seq <= high`` into the attached archive in one
    transaction; ``expected``: how many the live log holds (``EventLogError`` otherwise)."""
    # Deferred: the live log is only read, never locked for writing.
    with write_transaction(conn, "BEGIN"):
        conn.execute(_COPY_WRITERS, (after, high))
        inserted = conn.execute(_COPY_SLICE_SQL, (after, high)).rowcount
        if inserted != expected:  # rolled back, as any error
            raise EventLogError(
                f"a slice of the archive copied {inserted} events of seq {after + 1} to {high} "
                f"where the live log holds {expected}; nothing was deleted"
            )
    return int(inserted)


def _count(conn: sqlite3.Connection, after: int, high: int) -> int:
    sql = "SELECT count(*) FROM main.events WHERE seq > ? AND seq <= ?"
    return int(conn.execute(sql, (after, high)).fetchone()[0])


def _snapshot_at(store: GroupCommitStore, cut: int) -> Snapshot:
    snap, cursor = Loading(store.snapshots, cut, pace=Pace()).run()
    if cursor != cut:
        raise EventLogError(
            f"event log {store.location}: cannot fold it up to seq {cut} (the fold ends at "
            f"seq {cursor}); nothing was deleted"
        )
    return snap


def _record(
    store: GroupCommitStore, target: SQLiteEventStore, path: Path, first: int, last: int
) -> None:
    low, high = target.query(
        "SELECT min(at), max(at) FROM events WHERE seq >= ? AND seq <= ?", (first, last)
    )[0]
    first_at = target.at_time(low) if low is not None else datetime.now(UTC)
    last_at = target.at_time(high) if high is not None else first_at
    store.transaction(
        [
            (
                "INSERT INTO archives (path, first_seq, last_seq, first_at, last_at, "
                "archived_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    str(path),
                    first,
                    last,
                    _iso(first_at),
                    _iso(last_at),
                    _iso(datetime.now(UTC)),
                ),
            )
        ]
    )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


# -- cutting the live log ----------------------------------------------------------------------


def _finish_recorded(store: GroupCommitStore, stop: Callable[[], bool]) -> tuple[int, bool]:
    """Complete a run stopped after it recorded its archive: the cut snapshot (if missing)
    and the deletion of the recorded range. Returns how many events it deleted, and False
    when ``stop`` ended it before the range was gone (the run must end there: the log still
    holds events before its cut)."""
    cut = cut_of(store)
    first = _scalar(store, "SELECT min(seq) FROM events")
    if first is None or first > cut:
        return 0, True
    logger.warning(
        "event log {}: completing an archive run that was stopped: seq {} to {} are archived "
        "but still in the log",
        store.location,
        first,
        cut,
    )
    if not _scalar(store, "SELECT count(*) FROM snapshots WHERE cursor = ?", (cut,)):
        store.snapshots.save(_snapshot_at(store, cut), cut, "cut")
    return _delete(store, int(first), cut, stop)


def _delete(
    store: GroupCommitStore, first: int, cut: int, stop: Callable[[], bool]
) -> tuple[int, bool]:
    """Delete the events ``first <= seq <= cut``, ``DELETE_SLICE`` rows per transaction,
    resting between slices as long as the last one held the lock (writers get their turn)."""
    deleted = 0
    low = first
    while low <= cut:
        high = min(cut, low + DELETE_SLICE - 1)
        began = time.monotonic()
        store.transaction([("DELETE FROM events WHERE seq >= ? AND seq <= ?", (low, high))])
        deleted += high - low + 1
        low = high + 1
        if low <= cut:
            if stop():
                return deleted, False
            time.sleep(min(_MAX_PAUSE, time.monotonic() - began))
    return deleted, True


# -- space -------------------------------------------------------------------------------------


def log_size(store: GroupCommitStore) -> int | None:
    """The live log's bytes on disk: an SQLite file with its WAL, a PostgreSQL events table
    with its indexes and TOAST; None for an in-memory log."""
    if isinstance(store, SQLiteEventStore):
        if store.path == MEMORY:
            return None
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(store.path + suffix)
        return total
    found = _scalar(store, "SELECT pg_total_relation_size('events')")
    return None if found is None else int(found)


def _give_back(store: GroupCommitStore) -> str:
    """Give the freed space back; returns how (for the result and the docs)."""
    if not isinstance(store, SQLiteEventStore):
        store.query("VACUUM events")
        return "VACUUM (the space is reusable; the table keeps its size on disk)"
    if store.path == MEMORY:
        return "nothing to give back (in memory)"
    try:
        return _vacuum_file(store.path, store.lock_timeout)
    except sqlite3.Error as exc:
        raise EventLogError(f"cannot give the space back in {store.path}: {exc}") from exc


def _vacuum_file(path: str, lock_timeout: float) -> str:
    """Vacuum the SQLite log at ``path`` through a connection of our own.

    Python's ``execute`` steps a statement that returns no columns only once, and
    ``incremental_vacuum`` frees one page per step: ``executescript`` runs it to the end.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=max(lock_timeout, 5.0))
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            how = "incremental_vacuum"
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            while free:
                began = time.monotonic()
                conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
                left = conn.execute("PRAGMA freelist_count").fetchone()[0]
                if left >= free:
                    break
                free = left
                time.sleep(min(_MAX_PAUSE, time.monotonic() - began))
        else:
            how = "VACUUM (once: from now on the log gives space back incrementally)"
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    return how
