"""The ``failover`` command line: answers incident questions from an event log.

Every command reads the event log named as its first argument, an SQLite file's path or a
fleet's ``postgresql://`` URL (``maintenance`` takes ``--log``; ``demo`` writes an SQLite one),
also while other processes are still appending to it. Errors a
person makes (a missing or foreign file, a newer schema, a bad time expression, an unknown model
id) get one line on stderr and exit code 2; ``verify`` exits 1 when the log lacks what was
expected. Times are UTC.
"""

from __future__ import annotations

import contextlib
import enum
import getpass
import os
import select
import sqlite3
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import msgspec
import typer
import typer.core

from ...core.errors import EventLogError
from ...core.events import EVENT_TYPES, Event, Maintenance, encode
from ...core.health import HealthState
from ...core.scrub import scrub
from ...storage import GroupCommitStore
from ...storage.archive import ArchiveError, ArchiveRecord, ArchiveResult, records
from ...storage.archive import archive as archive_log
from ...storage.sqlite import SQLiteEventStore
from ..exposition import prometheus_text
from ..facade import is_postgres_url
from .archived import (
    ArchiveChainError,
    Chain,
    chain,
    fold_log,
    horizon,
    live_first,
    where_archived,
)
from .archived import missing as archived_since
from .files import is_sqlite
from .queries import (
    STATE_TYPES,
    EventFilter,
    audit_trail,
    first_seen,
    known_models,
    nth_last_seq,
    read_events,
)
from .render import (
    AUDIT_HEADERS,
    STATE_STYLES,
    Output,
    audit_rows,
    clock_text,
    describe,
    visible,
    visible_json,
)
from .tables import print_metrics, print_state_rows, rows_of
from .timeexpr import TimeExpressionError, parse_time


class _Commands(typer.core.TyperGroup):
    """The command group: a command whose reader went away (``failover timeline LOG | head``)
    ends quietly with exit code 0. click would exit 1, and ``set -o pipefail`` scripts fail."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click.Context
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise  # stderr's reader went away: the command's own exit code stands
            _discard_stdout()
            raise typer.Exit(0) from None


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports an error)."""
    if not hasattr(select, "poll"):
        return True  # no poll (Windows): a broken pipe there can only be stdout's
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(mask & select.POLLERR for _, mask in poller.poll(0))
    except (OSError, ValueError):
        return False


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what Python still holds buffered then goes nowhere, instead
    of failing again at exit with an "Exception ignored" message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


app = typer.Typer(
    name="failover",
    cls=_Commands,
    help="Inspect multi-model failover event logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Inspect multi-model failover event logs: timelines, states, metrics, audits; archive
    their old events.

    Times are UTC. A time (--since, --until, --at) is ISO-8601 (2024-05-01T03:12:00Z), relative
    to now (-15m, -2h, -1d), ``now``, or a clock time (03:12): the most recent one, today's or
    yesterday's.
    """


TIMES_HELP: Final = (
    "Times are UTC: ISO-8601 (2024-05-01T03:12:00Z), relative to now (-15m, -2h, -1d), now, "
    "or a clock time (03:12, 03:12:45): that time today, or yesterday if today's is still "
    "to come."
)


LOG_HELP: Final = "The event log: an SQLite file's path, or a postgresql:// URL."
LogArg = Annotated[str, typer.Argument(help=LOG_HELP, show_default=False)]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Only events at or after this time.")]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Only events at or before this time.")
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="The instant to look at: the events stamped at or before it (default: all).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Fail on events of types this version does not know, instead of skipping them.",
    ),
]
ArchivesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--archive",
        help="An archive file of this log (from `failover archive`), read before the log to "
        "answer for times before its cut (repeatable).",
    ),
]
POLL_SECONDS: Final = 0.5
MAX_COUNT: Final = 2**63 - 1  # SQLite's largest integer: --last goes into a query
_E = TypeVar("_E", bound=enum.StrEnum)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr; return the Exit to raise."""
    typer.echo(f"failover: {visible(message)}", err=True)
    return typer.Exit(code)


def say(message: str) -> None:
    """Print one line on stdout, control characters from the log or the user escaped."""
    typer.echo(visible(message))


def _refuse_foreign_database(path: Path) -> None:
    """Refuse an SQLite file that holds no event log before the store opens it for writing.

    Opening it read-write would switch it to WAL mode: someone else's database must be left
    exactly as it was.
    """
    if not path.is_file():
        return
    if path.stat().st_size == 0:
        raise fail(f"{path} is an empty file, not a failover event log")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return  # not SQLite at all: the store says so in its own words
    finally:
        conn.close()
    if not {"events", "meta"} <= tables:
        raise fail(f"{path} is an SQLite database but not a failover event log")


def open_log(target: str) -> GroupCommitStore:
    """Open an existing event log (a path or a ``postgresql://`` URL), or exit 2 with one
    clear line. The password of a URL comes from libpq: ``PGPASSWORD`` or ``~/.pgpass``."""
    if not target.strip():
        raise fail(f"no event log named: the log argument is {target!r}")
    try:
        if is_postgres_url(target):
            try:
                from ...storage.postgres import PostgresEventStore  # noqa: PLC0415 - optional
            except ImportError as exc:
                raise fail(
                    f"a postgresql:// log needs psycopg: pip install "
                    f"'devs-risks-multi-model-failover[postgres]' ({exc.name} is missing)"
                ) from None
            return PostgresEventStore(target, create=False)
        path = Path(target)
        _refuse_foreign_database(path)
        return SQLiteEventStore(path, create=False)
    except EventLogError as exc:
        raise fail(str(exc)) from None


@contextlib.contextmanager
def reading(target: str, *, strict: bool) -> Iterator[GroupCommitStore]:
    """``open_log`` for a command that reads events: a row that cannot be read ends it with one
    line and exit 2; events of types this version does not know are skipped and noted once on
    stderr (``strict``: they end it like a corrupt row)."""
    with open_log(target) as store:
        store.skip_unknown = not strict
        try:
            yield store
        except EventLogError as exc:
            raise fail(str(exc)) from None
        if store.unknown:
            typer.echo(
                f"note: skipped {store.unknown.total()} event(s) of types this version does not "
                f"know: {visible(', '.join(sorted(store.unknown)))} (upgrade to read them)",
                err=True,
            )


def _time(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except TimeExpressionError as exc:
        raise fail(f"{option}: {exc}") from None


def _text(option: str, value: str | None) -> str | None:
    """``value`` as given, unless it is not text: an argument that is not UTF-8 reaches Python
    with surrogates (a file name may, a call id cannot), which no query can take."""
    if value is not None:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise fail(f"{option}: {value!r} is not valid text (not UTF-8)") from None
    return value


def _check_model(store: GroupCommitStore, model_id: str, chained: Chain | None = None) -> None:
    known = known_models(store)
    if chained is not None:
        for segment in chained.segments[:-1]:
            known += [m for m in known_models(segment.store) if m not in known]
    if model_id not in known:
        listed = ", ".join(known) if known else "none: the log names no model yet"
        raise fail(f"unknown model id {model_id!r} in {store.location} (known: {listed})")


def _check_types(types: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(t.strip() for chunk in types for t in chunk.split(",") if t))
    unknown = sorted(set(wanted) - set(EVENT_TYPES))
    if unknown:
        raise fail(
            f"unknown event type(s): {', '.join(unknown)} (known: {', '.join(sorted(EVENT_TYPES))})"
        )
    return wanted


# -- archives read before the log ----------------------------------------------------------


@contextlib.contextmanager
def with_archives(
    store: GroupCommitStore, archives: Sequence[str] | None, *, strict: bool
) -> Iterator[Chain | None]:
    """The ``--archive`` files and the live log as one ``Chain`` (None without any); a file
    that is not an archive of this log, or archives that leave a gap, end the command with one
    line and exit 2."""
    if not archives:
        yield None
        return
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(reading(path, strict=strict)) for path in archives]
        try:
            with chain(store, opened) as chained:
                yield chained
        except ArchiveChainError as exc:
            raise fail(str(exc)) from None


def before_cut(
    store: GroupCommitStore, chained: Chain | None, instant: datetime | None, option: str
) -> Chain | None:
    """The chain to fold for the log up to ``instant``, or None when the live log alone
    answers (its cut snapshot holds every archived event). An instant before an archived
    event that no ``--archive`` given holds ends the command (exit 2), naming the files."""
    if instant is None:
        return None
    found = chained.records if chained is not None else tuple(records(store))
    latest = horizon(found, live_first(store, found))
    if latest is None or instant >= latest:
        return None
    first = chained.first if chained is not None else live_first(store, found)
    reached = horizon(found, first)
    if chained is not None and (reached is None or instant >= reached):
        return chained
    raise fail(
        f"{option} {clock_text(instant)} is before the cut of {scrub(store.location)}: "
        f"{where_archived(archived_since(found, first, instant))}"
    )


def note_archived(store: GroupCommitStore, chained: Chain | None, since: datetime | None) -> None:
    """One line on stderr when events from ``since`` on (None: any) are archived and not read."""
    found = chained.records if chained is not None else tuple(records(store))
    first = chained.first if chained is not None else live_first(store, found)
    outside = archived_since(found, first, since)
    if outside:
        typer.echo(f"note: {visible(where_archived(outside))}", err=True)


# -- timeline ------------------------------------------------------------------------------


@app.command(epilog=TIMES_HELP)
def timeline(
    log: LogArg,
    since: SinceOpt = None,
    until: UntilOpt = None,
    call: Annotated[str | None, typer.Option("--call", help="Only this call id.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Only this model (failovers from/to it too).")
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only this event type (repeatable, or comma-separated)."),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--last", min=1, max=MAX_COUNT, help="Only the last N matching events."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
    archives: ArchivesOpt = None,
) -> None:
    """The events in order, one line each: time, call, model, what happened, error kind, delay.

    Filters combine. With --json each line is the stored event as JSON. Events moved out by
    `failover archive` are read from the --archive files given (a note says which files hold
    the events asked for and not given).
    """
    with (
        reading(log, strict=strict) as store,
        with_archives(store, archives, strict=strict) as chained,
    ):
        flt = EventFilter(
            since=_time("--since", since),
            until=_time("--until", until),
            call_id=_text("--call", call),
            model_id=model,
            types=_check_types(types or ()),
            upto=store.last_seq(),
        )
        if model is not None:
            _check_model(store, model, chained)
        note_archived(store, chained, flt.since)
        out = Output()
        if chained is None:
            after = nth_last_seq(store, flt, last) if last is not None else 0
            _print_events(out, read_events(store, flt, after=after), as_json=as_json)
        else:
            events = chained.events(flt)
            _print_events(out, deque(events, last) if last is not None else events, as_json=as_json)
        if follow:
            _follow(out, store, flt, as_json=as_json)


def _print_events(out: Output, events: Iterable[Event], *, as_json: bool) -> int:
    if as_json:
        count = 0
        for event in events:
            out.stream.write(visible_json(encode(event)) + "\n")
            count += 1
        out.stream.flush()
        return count
    return out.lines(describe(event) for event in events)


def _follow(out: Output, store: GroupCommitStore, flt: EventFilter, *, as_json: bool) -> None:
    """Tail the log: each round reads what was committed since the last one. Another log put
    at the path (the file replaced) is said on stderr and followed from its start."""
    after = flt.upto or 0
    resets = store.resets
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(POLL_SECONDS)
            # From the last seq: nothing to decode twice, unless another log is now behind the
            # location, which read_others reads from its start (counted in resets).
            upto = store.read_others(store.last_seq())[1]
            if store.resets != resets:
                resets = store.resets
                after = 0
                typer.echo(
                    f"failover: {scrub(store.location)} was replaced; following the new log "
                    "from its start",
                    err=True,
                )
            if upto > after:
                _print_events(
                    out, read_events(store, replace(flt, upto=upto), after=after), as_json=as_json
                )
                after = upto


# -- state ---------------------------------------------------------------------------------


@app.command(epilog=TIMES_HELP)
def state(
    log: LogArg,
    at: AtOpt = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
    archives: ArchivesOpt = None,
) -> None:
    """Each model's health state at an instant (default: now), since when and why.

    An instant before the log's cut (see `failover archive`) needs its --archive files.
    """
    with (
        reading(log, strict=strict) as store,
        with_archives(store, archives, strict=strict) as chained,
    ):
        instant = _time("--at", at)
        source = before_cut(store, chained, instant, "--at")
        if source is None:
            rows = rows_of(fold_log(store, instant, STATE_TYPES), first_seen(store, instant))
        else:
            rows = rows_of(source.fold(instant, STATE_TYPES), source.first_seen(instant))
        if as_json:
            document = {"at": instant, "models": {row.model: row for row in rows}}
            typer.echo(visible_json(msgspec.json.encode(document)))
            return
        print_state_rows(Output(), rows, store.location, instant)


# -- metrics -------------------------------------------------------------------------------


def _choice(name: str, value: str, choices: type[_E]) -> _E:
    try:
        return choices(value.lower())
    except ValueError:
        allowed = ", ".join(c.value for c in choices)
        raise fail(f"{name}: {value!r} is not one of {allowed}") from None


class MetricsFormat(enum.StrEnum):
    """Output formats of ``metrics``."""

    TEXT = "text"
    JSON = "json"
    PROMETHEUS = "prometheus"


@app.command(epilog=TIMES_HELP)
def metrics(
    log: LogArg,
    at: AtOpt = None,
    output_format: Annotated[
        str, typer.Option("--format", help="text, json or prometheus.")
    ] = MetricsFormat.TEXT.value,
    strict: StrictOpt = False,
    archives: ArchivesOpt = None,
) -> None:
    """The metrics replayed from the log (up to --at): text, JSON or Prometheus exposition.

    An instant before the log's cut (see `failover archive`) needs its --archive files.
    """
    chosen = _choice("--format", output_format, MetricsFormat)
    with (
        reading(log, strict=strict) as store,
        with_archives(store, archives, strict=strict) as chained,
    ):
        instant = _time("--at", at)
        source = before_cut(store, chained, instant, "--at")
        snap = fold_log(store, instant) if source is None else source.fold(instant)
    if chosen is MetricsFormat.JSON:
        typer.echo(visible_json(msgspec.json.encode(snap.metrics)))
    elif chosen is MetricsFormat.PROMETHEUS:
        sys.stdout.write(prometheus_text(snap))
    else:
        print_metrics(Output(), snap)


# -- audit ---------------------------------------------------------------------------------


@app.command()
def audit(
    log: LogArg,
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    as_json: JsonOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Every state change and maintenance action: when, which model, what, who, why."""
    with reading(log, strict=strict) as store:
        if model is not None:
            _check_model(store, model)
        entries = [e for e in audit_trail(store) if model in (None, e.model_id)]
    if as_json:
        for entry in entries:
            typer.echo(visible_json(msgspec.json.encode(entry)))
        return
    out = Output()
    if not entries:
        out.text(f"{scrub(log)}: no state change and no maintenance action recorded")
        return
    styles = [STATE_STYLES[e.to_state] for e in entries]
    out.table("audit trail", list(AUDIT_HEADERS), audit_rows(entries), styles)


# -- maintenance ---------------------------------------------------------------------------


class Switch(enum.StrEnum):
    """``maintenance on`` takes a model out of rotation, ``off`` puts it back."""

    ON = "on"
    OFF = "off"


def _operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


@app.command()
def maintenance(
    switch: Annotated[
        str, typer.Argument(help="on: out of rotation; off: back in.", show_default=False)
    ],
    model: Annotated[str, typer.Argument(help="The model id.", show_default=False)],
    log: Annotated[str, typer.Option("--log", help=LOG_HELP)],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: the current user).")] = None,
) -> None:
    """Record an operator's maintenance action in the log.

    A running MultiModelFailover on the same log picks it up within one health-check interval.
    """
    chosen = _choice("maintenance", switch, Switch)
    if not reason.strip():
        raise fail("--reason must say why (it goes into the audit trail)")
    _check_utf8("--reason", reason)
    _check_utf8("--by", by or "")
    with open_log(log) as store:
        _check_model(store, model)
        before = fold_log(store, None, STATE_TYPES).state_of(model).state
        on = chosen is Switch.ON
        who = by or _operator()
        store.append(
            Maintenance(at=datetime.now(UTC), model_id=model, on=on, reason=reason, by=who)
        )
        if not store.flush():
            raise fail(f"could not write to {scrub(log)}: {store.last_error}", code=1)
        seq = store.query("SELECT max(seq) FROM events WHERE writer = ?", (store.writer_key,))[0][0]
        if seq is None:  # the store dropped the event (it logs why): never claim it was recorded
            raise fail(f"could not record the action in {scrub(log)}", code=1)
    after = (
        HealthState.MAINTENANCE
        if on
        else (HealthState.HEALTHY if before is HealthState.MAINTENANCE else before)
    )
    say(
        f"recorded maintenance {chosen.value} for {model} in {scrub(log)} (seq {seq}, by {who}): "
        f"{before.value} -> {after.value}"
    )
    if not on and before is not HealthState.MAINTENANCE:
        say(f"note: {model} was not in maintenance; its state stays {before.value}")


def _check_utf8(option: str, value: str) -> None:
    """The log stores UTF-8 text; argv bytes that are not UTF-8 arrive as lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise fail(
            f"{option}: not UTF-8 text (a byte that is not UTF-8 at character {exc.start + 1}); "
            "the log stores UTF-8"
        ) from None


# -- verify --------------------------------------------------------------------------------

LogsArg = Annotated[
    list[str],
    typer.Argument(
        help="One or more event logs (paths or postgresql:// URLs).", show_default=False
    ),
]


@app.command()
def verify(
    logs: LogsArg,
    expect: Annotated[
        list[str] | None,
        typer.Option("--expect", help="An event type the log must hold (repeatable)."),
    ] = None,
    min_count: Annotated[
        int, typer.Option("--min", min=1, help="How many of each expected event, at least.")
    ] = 1,
    strict: StrictOpt = False,
) -> None:
    """Exit 0 when the logs' snapshots agree with their events and hold --expect; else 1.

    Each snapshot a log keeps is compared with a fold of its events from the start (from the
    cut, in an archived log); a disagreement is named, figure by figure. With --expect, the
    logs together must also hold that many events of each type (e.g. a failover).
    """
    expect = expect or []
    unknown = sorted(set(expect) - set(EVENT_TYPES))
    if unknown:
        raise fail(
            f"unknown event type(s): {', '.join(unknown)} (known: {', '.join(sorted(EVENT_TYPES))})"
        )
    counts: Counter[str] = Counter()
    checked: list[str] = []
    problems: list[str] = []
    for log in logs:
        with reading(log, strict=strict) as store:
            if expect:
                counts.update(count_types(store, expect))
            check = store.snapshots.verify()
        lines = [f"{scrub(log)}: {line}" for line in check.lines()]
        (checked if check.ok else problems).extend(lines)
    if problems:
        for line in problems:
            typer.echo(f"failover: {visible(line)}", err=True)
        raise fail("snapshots disagree with the log: see above", code=1)
    where = scrub(logs[0]) if len(logs) == 1 else f"{len(logs)} logs"
    missing = [
        f"{kind} ({counts[kind]} < {min_count})" for kind in expect if counts[kind] < min_count
    ]
    if missing:
        raise fail(f"{where}: expected events missing: {', '.join(missing)}", code=1)
    if expect:
        found = ", ".join(f"{counts[kind]} {kind}" for kind in dict.fromkeys(expect))
        say(f"ok: {where} hold(s) {found}")
    for line in checked:
        say(f"ok: {line}")


def count_types(store: GroupCommitStore, types: list[str]) -> Counter[str]:
    """How many events of each of ``types`` the store holds, each row decoded as the other
    commands read it (an indexed read of those types)."""
    flt = EventFilter(types=tuple(dict.fromkeys(types)), upto=store.last_seq())
    return Counter(event.type for event in read_events(store, flt))


# -- archive -------------------------------------------------------------------------------


@app.command(name="archive", epilog=TIMES_HELP)
def archive_command(
    log: LogArg,
    before: Annotated[str, typer.Option("--before", help="Move the events older than this time.")],
    to: Annotated[
        Path,
        typer.Option(
            "--to", help="The archive: an SQLite file, created, or continued if it exists."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Move the events older than --before into an archive file; the log gets smaller.

    The archive is an event log that every command reads (--archive FILE on state, metrics
    and timeline, to answer for times before the cut). The log keeps a snapshot at the cut:
    its totals, states and replay stay what they were. Safe while engines append to the log;
    an interrupted run loses nothing, and run again with the same --to it completes.
    """
    when = _time("--before", before)
    assert when is not None  # noqa: S101 - a required option
    if not to.parent.is_dir():
        raise fail(f"--to: the folder {to.parent} does not exist (create it first)")
    _refuse_foreign_database(to)
    with open_log(log):  # one clear line for a missing, foreign or newer log; nothing created
        pass
    try:
        with _writable(log) as store:
            result = archive_log(store, before=when, to=to)
            found = records(store)
    except ArchiveError as exc:
        raise fail(str(exc)) from None
    except EventLogError as exc:
        raise fail(
            f"archive stopped: {exc}; nothing is lost: run it again with the same --to", code=1
        ) from None
    if as_json:
        typer.echo(visible_json(msgspec.json.encode(result)))
        return
    for line in archive_lines(scrub(log), when, result, found):
        say(line)


@contextlib.contextmanager
def _writable(target: str) -> Iterator[GroupCommitStore]:
    """An existing log opened to be written (its snapshots table created if it is older)."""
    try:
        if is_postgres_url(target):
            from ...storage.postgres import PostgresEventStore  # noqa: PLC0415 - optional

            store: GroupCommitStore = PostgresEventStore(target, create=True)
        else:
            store = SQLiteEventStore(target, create=True)
    except EventLogError as exc:
        raise fail(str(exc)) from None
    with store:
        yield store


def archive_lines(
    log: str, before: datetime, result: ArchiveResult, found: Sequence[ArchiveRecord]
) -> list[str]:
    """What ``archive`` prints: what moved where, the cut, the sizes, the time taken."""
    if result.first_seq is None and not result.moved:
        return [f"nothing to move: {log} holds no event before {clock_text(before)}"]
    lines = []
    if result.first_seq is not None and result.last_seq is not None:
        span = [r for r in found if r.last_seq == result.last_seq]
        when = (
            f", {clock_text(span[-1].first_at)} to {clock_text(span[-1].last_at)}" if span else ""
        )
        lines.append(
            f"moved {result.moved} event(s) (seq {result.first_seq} to {result.last_seq}{when}) "
            f"into {result.archive}"
        )
    else:
        lines.append(f"completed an interrupted archive: {result.moved} event(s) moved out")
    rate = f", {result.moved / result.seconds:,.0f} events/s" if result.seconds > 0 else ""
    lines.append(
        f"{log}: cut at seq {result.cut}; {_size(result.size_before)} -> "
        f"{_size(result.size_after)} ({result.space}); {result.seconds:.2f}s{rate}"
    )
    if not result.complete:
        lines.append("stopped before the end: run it again with the same --to to complete it")
    return lines


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} bytes"  # pragma: no cover - the loop returns


# -- report and demo -----------------------------------------------------------------------


@app.command(epilog=TIMES_HELP)
def report(
    log: LogArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Write a self-contained HTML incident report: health timeline, metrics, worst calls."""
    from .report import build_report  # noqa: PLC0415 - only this command needs it

    _refuse_database_output(output)
    with reading(log, strict=strict) as store:
        start = _time("--since", since)
        note_archived(store, None, start)
        page, summary = build_report(store, since=start, until=_time("--until", until))
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
    say(f"wrote {output}: {summary}")


def _refuse_database_output(output: Path) -> None:
    """Never write a report over an SQLite database or its journal: the log itself (under any
    name), another log, someone's database. An earlier report is replaced as asked."""
    for suffix in ("-wal", "-shm", "-journal"):
        if output.name.endswith(suffix) and is_sqlite(
            output.with_name(output.name[: -len(suffix)])
        ):
            raise fail(f"{output} belongs to an SQLite database; choose another --output")
    if is_sqlite(output):
        raise fail(f"{output} is an SQLite database (an event log?); choose another --output")


@app.command()
def demo(
    log: Annotated[Path, typer.Option("--log", help="Where to write the demo's event log.")] = Path(
        "var/demo/events.sqlite3"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated models.")] = 7,
) -> None:
    """Play a scripted incident on simulated models (no network, no keys) and explain it."""
    from .demo import DemoError, run_demo  # noqa: PLC0415 - only this command needs it

    try:
        run_demo(log, seed=seed, out=Output())
    except (DemoError, EventLogError) as exc:
        raise fail(str(exc)) from None


# -- whatif --------------------------------------------------------------------------------


@app.command(name="whatif", epilog=TIMES_HELP)
def whatif_command(
    log: LogArg,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="A configuration document (config/risks.yaml's schema) whose retry_policy, "
            "health_policy, health_check_interval and client order replace the recorded ones "
            "(keys left out keep their recorded values).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only the calls that start at or after this time (the replay itself starts "
            "at the engine start in force then).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Only the calls that start at or before this time."),
    ] = None,
    maintenance: Annotated[
        list[str] | None,
        typer.Option(
            "--maintenance",
            help="MODEL@WHEN or MODEL@WHEN-WHEN: an operator action the what-if adds (repeatable).",
        ),
    ] = None,
    without: Annotated[
        list[str] | None,
        typer.Option("--without", help="Replay without this client (repeatable)."),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    strict: StrictOpt = False,
) -> None:
    """Replay the recorded calls under another policy, next to what the log recorded.

    Every call runs again at its recorded start, through the real engine on virtual time, its
    models answering as the log saw them answer. The recorded policy is replayed first: it
    must reproduce the log (else exit 1). --format html: both health timelines, on one page.
    """
    from .whatif import (  # noqa: PLC0415 - only this command needs it
        WhatIfFormat,
        WhatIfInputError,
        build_change,
        run_whatif,
    )

    chosen = _choice("--format", output_format, WhatIfFormat)
    with reading(log, strict=strict) as store:
        start, end = _time("--since", since), _time("--until", until)
        try:
            change = build_change(policy, maintenance or [], without or [])
            code = run_whatif(
                store, change, since=start, until=end, output_format=chosen, out=Output()
            )
        except WhatIfInputError as exc:
            raise fail(str(exc)) from None
    if code:
        raise fail(
            "calibration failed: the recorded policy, replayed, does not reproduce the log "
            "(see the report's first lines)",
            code=code,
        )


def main() -> None:
    """Console-script entry point."""
    stdout_before = _stdout_id()
    try:
        app(prog_name="failover")
    except SystemExit as exc:
        # rich, on a broken pipe, points stdout at /dev/null and exits 1
        # (Console.on_broken_pipe): the reader went away, which is not an error of ours.
        if exc.code == 1 and _stdout_id() != stdout_before:
            raise SystemExit(0) from None
        raise
    finally:
        _flush_stdout()


def _stdout_id() -> tuple[int, int] | None:
    try:
        found = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


def _flush_stdout() -> None:
    """Flush what a command left buffered; a reader that went away is no error."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
