"""Event stores: implementations of the core's ``EventStore`` protocol.

``SQLiteEventStore`` (one host) and ``storage.postgres.PostgresEventStore`` (a fleet; import it
from its module: psycopg is the optional ``postgres`` extra) share ``GroupCommitStore``: the
queue, the group-committing writer thread, the waiters and the retries.
"""

from ._group_commit import HOT_TYPES, NOT_HOT, GroupCommitStore
from .sqlite import SQLiteEventStore

__all__ = ["HOT_TYPES", "NOT_HOT", "GroupCommitStore", "SQLiteEventStore"]
