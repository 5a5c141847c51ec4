"""Event stores: implementations of the core's ``EventStore`` protocol."""

from .sqlite import SQLiteEventStore

__all__ = ["SQLiteEventStore"]
