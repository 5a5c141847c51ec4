"""Snapshots of the fold (work in progress: the helper owning this module replaces it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..core.projections import Snapshot, fold

# Default: a snapshot every this many committed events (and one at close).
SNAPSHOT_EVERY: Final = 10_000
# The table, in both backends' SQL (``{blob}``: BLOB for SQLite, bytea for PostgreSQL).
SNAPSHOTS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS snapshots (cursor {int} PRIMARY KEY, kind text NOT NULL, "
    "fold text NOT NULL, at text NOT NULL, body {blob} NOT NULL)"
)

if TYPE_CHECKING:
    from ._group_commit import GroupCommitStore


class Snapshots:
    """A store's snapshots of the fold."""

    def __init__(self, store: GroupCommitStore, *, every: int | None) -> None:
        self.store = store
        self.every = every

    def committed(self, count: int) -> None:
        """The writer thread committed ``count`` more events."""

    def at_close(self) -> None:
        """The store is closing: its writer has stopped, its connection is still open."""

    def load(self, upto: int | None = None, *, from_start: bool = False) -> tuple[Snapshot, int]:
        """The fold of the log up to ``upto`` (default: all of it), and its cursor."""
        events = list(self.store.read())
        snap = fold(e for e in events if upto is None or e.seq <= upto)
        return snap, max((e.seq for e in events), default=0)
