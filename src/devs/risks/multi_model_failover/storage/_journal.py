"""A per-process journal: what makes ``process`` durability on a file log cost one write(2).

``process`` durability promises that an event survives a crash of the process once
``wait_committed`` returned (not a crash of the OS: that is ``power``). Bytes handed to the
kernel with write(2) survive a process crash exactly as a WAL commit with ``synchronous=NORMAL``
does, at a fraction of the cost of an SQLite transaction. So a store appends its callers' events
to a journal file of its own, with one write(2) per batch, and returns; its writer thread moves
them into the log in group commits, as in ``buffered`` mode, recording in the same transaction
the last journal record it moved (``meta`` row ``journal:<token>``).

A journal file sits beside the log, ``<log>.<token>-<generation>.failover.journal`` (a name
SQLite never uses), created readable by its owner only. Its first line names the writer; then
one line per event: its ticket, the CRC-32 of its JSON, and the JSON (the bytes the log stores,
so the journal holds nothing the log would not). A record cut short by a crash has no newline
and is ignored: its caller was never told it was committed.

The owner holds an exclusive ``flock`` on each of its files for their whole life: an opener of
the log that gets the lock knows the owner is gone, folds the records the log does not have
yet into the log (``dead_journals``), then deletes the file. Where ``fcntl`` is missing
(Windows) there is no journal and callers commit their own events as before.

A file grows to ``ROTATE_BYTES``, then the next records go to a new generation; the old one is
deleted once every record in it is in the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import zlib
from pathlib import Path
from typing import Final

import msgspec
from loguru import logger

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no journal, callers commit inline
    fcntl = None  # type: ignore[assignment]

SUFFIX: Final = ".failover.journal"
ROTATE_BYTES: Final = 8 * 2**20
_MAGIC: Final = b"#failover-journal 1 "
_TOKEN_CHARS: Final = 12
# A journal file being created: renamed to its final name once locked and headed, so an opener
# never finds (and takes for dead) a journal whose owner has not locked it yet.
_NEW: Final = ".new"


class _Header(msgspec.Struct):
    writer: str


_header_decoder = msgspec.json.Decoder(_Header)


def available() -> bool:
    """Whether this platform can run a journal (it needs ``fcntl.flock``)."""
    return fcntl is not None


def meta_key(token: str) -> str:
    """The ``meta`` key under which the log records how far a journal was moved into it."""
    return f"journal:{token}"


def record(ticket: int, body: bytes) -> bytes:
    """One journal line: ticket, CRC-32 of the body, the body (JSON has no raw newline)."""
    return b"%d %08x %s\n" % (ticket, zlib.crc32(body), body)


def _name_pattern(log: Path) -> re.Pattern[str]:
    return re.compile(
        re.escape(log.name)
        + rf"\.([0-9a-f]{{{_TOKEN_CHARS}}})-(\d+)"
        + re.escape(SUFFIX)
        + f"({re.escape(_NEW)})?"
    )


class Journal:
    """This store's journal files. Not thread-safe: the store calls it under its journal lock.

    ``broken`` once a write failed: the store stops journaling (its callers then wait for the
    log's commits again), since a record cut short must stay the file's last.
    """

    def __init__(self, log: str, writer: str) -> None:
        self.log = log
        self.writer = writer
        self.token = secrets.token_hex(_TOKEN_CHARS // 2)
        self.key = meta_key(self.token)
        self.broken = False
        self._generation = 0
        self._fd: int | None = None
        self._path = ""
        self._size = 0
        self._last = 0  # the last ticket written to the current file
        self._retired: list[tuple[int, str, int]] = []  # fd, path, last ticket

    @property
    def paths(self) -> list[str]:
        """The journal files this store has now (for tests and messages)."""
        current = [self._path] if self._fd is not None else []
        return [path for _, path, _ in self._retired] + current

    def write(self, records: list[tuple[int, bytes]]) -> None:
        """Append ``records`` (ticket, event JSON) with one write(2). ``OSError`` when that
        fails or writes less; the journal is then ``broken``."""
        data = b"".join(record(ticket, body) for ticket, body in records)
        try:
            if self._fd is None:
                self._create()
            assert self._fd is not None  # noqa: S101 - for mypy: ``_create`` opened it
            written = os.write(self._fd, data)
        except OSError:
            self.broken = True
            raise
        if written != len(data):
            self.broken = True
            raise OSError(f"short write to {self._path}: {written} of {len(data)} bytes")
        self._size += written
        self._last = records[-1][0]
        if self._size >= ROTATE_BYTES:
            self._retired.append((self._fd, self._path, self._last))
            self._fd = None

    def _create(self) -> None:
        self._generation += 1
        path = f"{self.log}.{self.token}-{self._generation}{SUFFIX}"
        fd = os.open(path + _NEW, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        header = _MAGIC + msgspec.json.encode(_Header(self.writer)) + b"\n"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            written = os.write(fd, header)
            if written == len(header):
                os.rename(path + _NEW, path)
        except BaseException:
            written = -1
            raise
        finally:
            if written != len(header):
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path + _NEW)
        if written != len(header):
            raise OSError(f"short write to {path}: {written} of {len(header)} bytes")
        self._fd, self._path, self._size = fd, path, len(header)

    @property
    def retired(self) -> bool:
        """Whether full files wait to be deleted (see ``moved``)."""
        return bool(self._retired)

    def moved(self, ticket: int) -> None:
        """Every record up to ``ticket`` is in the log: delete the full files wholly in it."""
        keep = []
        for fd, path, last in self._retired:
            if last <= ticket:
                _remove(fd, path)
            else:
                keep.append((fd, path, last))
        self._retired = keep

    def close(self, *, keep: bool) -> None:
        """Let go of every file: deleted (the log has all their records), or, with ``keep``,
        left for the next opener of the log to fold in."""
        files = [(fd, path) for fd, path, _ in self._retired]
        if self._fd is not None:
            files.append((self._fd, self._path))
        self._retired, self._fd = [], None
        for fd, path in files:
            if keep:
                os.close(fd)
            else:
                _remove(fd, path)

    def abandon(self) -> None:
        """Let go of the files without touching them: a forked child's copy of its parent's
        journal (the parent still writes, moves and deletes them, and keeps their locks)."""
        fds = [fd for fd, _, _ in self._retired]
        if self._fd is not None:
            fds.append(self._fd)
        self._retired, self._fd, self.broken = [], None, True
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _remove(fd: int, path: str) -> None:
    """Delete ``path``, then unlock it: an opener that locks it after sees it gone (and leaves
    it alone) rather than folding records the log has into it again. ``OSError`` when it
    cannot be deleted (a read-only folder): it is unlocked all the same."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


class DeadJournal:
    """The journal files of one writer whose process is gone, locked by this process."""

    def __init__(self, token: str, writer: str) -> None:
        self.token = token
        self.key = meta_key(token)
        self.writer = writer
        self.records: dict[int, bytes] = {}  # ticket -> event JSON
        self.damaged = 0
        self.files: list[tuple[int, str]] = []

    def release(self, *, delete: bool) -> None:
        """Unlock the files, deleted first when the log now has their records. ``OSError``
        (after every file is unlocked) when one could not be deleted."""
        failed: OSError | None = None
        for fd, path in self.files:
            if not delete:
                os.close(fd)
                continue
            try:
                _remove(fd, path)
            except OSError as exc:
                failed = failed or exc
        self.files = []
        if failed is not None:
            raise failed


def dead_journals(log: str) -> list[DeadJournal]:
    """The journals beside ``log`` whose owners are gone, each locked by this process until
    ``release``; a journal still locked by its owner is left alone. Files being created by a
    process that died before it used them are deleted (they hold no record)."""
    if fcntl is None:
        return []
    path = Path(log)
    pattern = _name_pattern(path)
    try:
        names = sorted(os.listdir(path.parent or "."))
    except OSError:
        return []
    by_writer: dict[str, list[tuple[str, bool]]] = {}
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None:
            by_writer.setdefault(match.group(1), []).append((name, bool(match.group(3))))
    found = []
    for token, files in by_writer.items():
        dead = _take_writer(log, path.parent, token, files)
        if dead is not None:
            found.append(dead)
    return found


def _take_writer(
    log: str, folder: Path, token: str, files: list[tuple[str, bool]]
) -> DeadJournal | None:
    """The dead journal of writer ``token``: every one of its files locked, or none (None).

    Its ``meta`` row covers all its files: an opener that took some of them while another took
    the rest would add the records out of order, or skip some as moved."""
    locked: list[tuple[int, str, bool]] = []
    for name, unfinished in files:
        file = str(folder / name)
        fd = _lock(file)
        if fd is None:  # its owner lives, or another opener is at it
            for held, _, _ in locked:
                os.close(held)
            return None
        locked.append((fd, file, unfinished))
    contents = []
    for fd, file, unfinished in locked:
        try:  # a file never renamed to its final name holds no record
            contents.append(b"" if unfinished else _read(fd))
        except OSError as exc:
            logger.error("event log {}: cannot read journal {} ({})", log, file, exc)
            for held, _, _ in locked:
                os.close(held)
            return None
    dead: DeadJournal | None = None
    for (fd, file, _), data in zip(locked, contents, strict=True):
        writer, records, damaged = parse(data)
        if writer is None:  # its owner died before it headed (or named) the file: nothing in it
            with contextlib.suppress(OSError):
                _remove(fd, file)
            continue
        if dead is None:
            dead = DeadJournal(token, writer)
        dead.files.append((fd, file))
        dead.records.update(records)
        dead.damaged += damaged
    return dead


def _lock(file: str) -> int | None:
    """``file`` opened and locked, if its owner is gone and it is still at its path."""
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        opened, now = os.fstat(fd), os.stat(file)
    except OSError:  # locked: its owner lives (or the file just went)
        os.close(fd)
        return None
    if (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
        os.close(fd)  # deleted by its owner (or another opener) once it was done with it
        return None
    return fd


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(data: bytes) -> tuple[str | None, dict[int, bytes], int]:
    """A journal file's writer (None without a whole header), its records by ticket, and how
    many lines were damaged (skipped). A last line cut short is not counted: a crash during
    its write(2) leaves one, and its caller was never told it was committed."""
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: empty, or a record cut short
    if not lines or not lines[0].startswith(_MAGIC):
        return None, {}, 0
    try:
        writer = _header_decoder.decode(lines[0][len(_MAGIC) :]).writer
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, {}, 0
    records: dict[int, bytes] = {}
    damaged = 0
    for line in lines[1:]:
        found = _record(line)
        if found is None:
            damaged += 1
        else:
            records[found[0]] = found[1]
    return writer, records, damaged


def _record(line: bytes) -> tuple[int, bytes] | None:
    """The ticket and body of one journal line; None if it is damaged (its CRC fails)."""
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        return None
    ticket, crc, body = parts
    try:
        sound = int(crc, 16) == zlib.crc32(body)
        number = int(ticket)
    except ValueError:
        return None
    return (number, body) if sound else None
