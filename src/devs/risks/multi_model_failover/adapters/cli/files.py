"""What a file on disk is, found without opening it as a database (which could change it)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

SQLITE_HEADER: Final = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    """True when ``path`` is a regular file that starts as every SQLite database does."""
    if not path.is_file():  # a FIFO would block the read below
        return False
    try:
        with path.open("rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:  # missing, a directory, unreadable
        return False
