"""The ``failover`` command line: answers incident questions from an event log.

Errors a person makes (a missing or foreign file, a newer schema) get one line on stderr and
exit code 2; ``verify`` exits 1 when the log lacks what was expected.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from ..core.errors import EventLogError
from ..core.events import EVENT_TYPES
from ..storage.sqlite import SQLiteEventStore

app = typer.Typer(
    name="failover",
    help="Inspect multi-model failover event logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Inspect multi-model failover event logs: timelines, states, metrics, audits."""


LogArg = Annotated[Path, typer.Argument(help="Path of the SQLite event log.", show_default=False)]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr; return the Exit to raise."""
    typer.echo(f"failover: {message}", err=True)
    return typer.Exit(code)


def open_log(path: Path) -> SQLiteEventStore:
    """Open an existing event log for reading, or exit 2 with one clear line."""
    try:
        return SQLiteEventStore(path, create=False)
    except EventLogError as exc:
        raise fail(str(exc)) from None


LogsArg = Annotated[
    list[Path], typer.Argument(help="One or more SQLite event logs.", show_default=False)
]


@app.command()
def verify(
    logs: LogsArg,
    expect: Annotated[
        list[str],
        typer.Option("--expect", help="An event type the log must hold (repeatable)."),
    ],
    min_count: Annotated[
        int, typer.Option("--min", min=1, help="How many of each expected event, at least.")
    ] = 1,
) -> None:
    """Exit 0 when the logs together hold the expected events (e.g. a failover), else 1."""
    unknown = sorted(set(expect) - set(EVENT_TYPES))
    if unknown:
        raise fail(
            f"unknown event type(s): {', '.join(unknown)} (known: {', '.join(sorted(EVENT_TYPES))})"
        )
    counts: Counter[str] = Counter()
    for log in logs:
        with open_log(log) as store:
            counts.update(count_types(store, expect))
    where = str(logs[0]) if len(logs) == 1 else f"{len(logs)} logs"
    missing = [
        f"{kind} ({counts[kind]} < {min_count})" for kind in expect if counts[kind] < min_count
    ]
    if missing:
        raise fail(f"{where}: expected events missing: {', '.join(missing)}", code=1)
    found = ", ".join(f"{counts[kind]} {kind}" for kind in dict.fromkeys(expect))
    typer.echo(f"ok: {where} hold(s) {found}")


def count_types(store: SQLiteEventStore, types: list[str]) -> Counter[str]:
    """How many events of each of ``types`` the store holds (an indexed query)."""
    placeholders = ",".join("?" * len(types))
    sql = f"SELECT type, count(*) FROM events WHERE type IN ({placeholders}) GROUP BY type"  # noqa: S608 - placeholders only
    try:
        return Counter(dict(store.db.execute(sql, list(types)).fetchall()))
    except Exception as exc:  # noqa: BLE001 - any read failure is one line for the user
        raise fail(f"cannot read {store.path}: {exc}") from None


def main() -> None:
    """Console-script entry point."""
    app(prog_name="failover")


if __name__ == "__main__":  # pragma: no cover
    main()
