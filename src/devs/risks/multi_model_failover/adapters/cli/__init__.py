"""The ``failover`` command line: its commands, what they print, the HTML report and the demo.

``commands`` holds the typer app; ``queries`` reads an event log, ``tables`` and ``render``
print, ``report`` writes the HTML page, ``demo`` plays the scripted incident, ``timeexpr``
parses times, ``files`` tells an SQLite file from others. Importing this package imports none
of them: ``main`` does, when it runs.
"""

from __future__ import annotations


def main() -> None:
    """Console-script entry point of ``failover``."""
    # Imported here so that importing one helper module (queries, render) does not load typer.
    from .commands import main as run  # noqa: PLC0415

    run()


__all__ = ["main"]
