"""Logging set-up for applications (the CLI). The library itself stays silent.

Following loguru's library convention, the package disables its logger on import; an
application opts in with ``enable_logging()`` or ``logger.enable(PACKAGE)``.
"""

from __future__ import annotations

import sys
from typing import Final, TextIO

from loguru import logger

PACKAGE: Final = "devs.risks.multi_model_failover"


def enable_logging(level: str = "INFO", sink: TextIO | None = None) -> int:
    """Send the package's log lines to ``sink`` (stderr); returns the handler id.

    ``diagnose`` stays off so tracebacks never print local variables (prompts, keys).
    """
    logger.enable(PACKAGE)
    return logger.add(
        sink if sink is not None else sys.stderr,
        level=level,
        diagnose=False,
        backtrace=False,
        filter=PACKAGE,
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}",
    )
