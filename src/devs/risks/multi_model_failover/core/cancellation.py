"""Who cancelled? Only the caller's own cancellation (or our own timer's) is a cancel.

A ``CancelledError`` can also come out of a client that awaited a future some other code
cancelled. That is the client failing, not the caller leaving, and is treated as a failed
attempt or probe. On asyncio the caller's task says whether it is being cancelled
(``Task.cancelling()``, which anyio's cancel scopes also raise); on trio a cancellation can only
come from a cancel scope, so asyncio's ``CancelledError`` there is always foreign.
"""

from __future__ import annotations

import asyncio


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's."""
    try:
        asyncio.current_task()
    except RuntimeError:  # no asyncio loop in this thread: trio, or another backend
        return False
    return True


def is_foreign_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation that nobody asked of the running task."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    if not on_asyncio():
        return True
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
