"""The exception tree of the package.

::

    Exception
     +-- ModelError                 a model call failed; ``kind`` says how (ErrorKind)
     |    +-- AllModelsFailedError  every client in the call's order was exhausted
     |         +-- DeadlineExceededError (also a TimeoutError) the call's budget ran out
     +-- ValueError
          +-- ConfigError           bad configuration: names the key path and the source
          +-- EventLogError         the event log cannot be opened, read or written
               +-- SchemaVersionError  the log was written by a newer version

Every message is scrubbed of secrets before it is stored on an exception.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import msgspec

from .scrub import scrub


class ErrorKind(enum.StrEnum):
    """Why an attempt failed; decides retry, failover and whether health suffers."""

    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    SERVER = "server"
    UNKNOWN = "unknown"
    AUTH = "auth"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    BAD_REQUEST = "bad_request"
    # The call's own deadline (``timeout=`` or ``call_budget``) cut the attempt short: the
    # model is not to blame, so it never counts against health.
    DEADLINE = "deadline"

    @property
    def retryable(self) -> bool:
        """Whether the same client is tried again by default (``RetryPolicy.error_actions``
        decides for a given engine)."""
        return self in _RETRYABLE

    @property
    def fails_over(self) -> bool:
        """Whether the next client is tried by default (``bad_request`` and
        ``content_filter`` fail the whole call)."""
        return self not in (ErrorKind.BAD_REQUEST, ErrorKind.CONTENT_FILTER, ErrorKind.DEADLINE)

    @property
    def counts_against_health(self) -> bool:
        """Whether the failure lengthens the client's failure streak."""
        return self in _COUNTS


_RETRYABLE = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.SERVER, ErrorKind.UNKNOWN})
_COUNTS = _RETRYABLE | {ErrorKind.TIMEOUT, ErrorKind.AUTH}


class ModelError(Exception):
    """A model call failed.

    ``kind`` decides what the engine does next (see ``ErrorKind``); ``retry_after`` (seconds)
    is the provider's own wait hint, honoured for ``rate_limited``. ``status`` is the HTTP
    status and ``code`` the provider's own error code (or type), when the failure came from
    an HTTP answer that had them; ``None`` otherwise. ``usage``: the tokens the provider says
    the failed attempt used (a ``Usage``, or any object or mapping with ``input_tokens`` and
    ``output_tokens``), recorded on its ``attempt_failed`` event; a failed attempt is never
    counted as usage otherwise.
    """

    def __init__(
        self,
        message: str = "",
        *,
        kind: ErrorKind | str = ErrorKind.UNKNOWN,
        retry_after: float | None = None,
        model_id: str | None = None,
        status: int | None = None,
        code: str | None = None,
        usage: object = None,
    ) -> None:
        try:
            self.kind = ErrorKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in ErrorKind)
            raise ValueError(f"ModelError kind {kind!r} is not one of: {known}") from None
        if retry_after is not None and (math.isnan(retry_after) or retry_after < 0):
            raise ValueError(f"ModelError retry_after must be >= 0 seconds, got {retry_after!r}")
        self.message = scrub(str(message))
        self.retry_after = retry_after
        self.model_id = model_id
        self.status = status
        self.code = scrub(code) if code else None
        self.usage = usage
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, kind={self.kind.value!r})"


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One failed attempt as reported by ``AllModelsFailedError.attempts``."""

    model_id: str
    attempt: int
    error_kind: ErrorKind
    message: str
    # What the client raised, its text scrubbed; None for the engine's own timeouts.
    error: BaseException | None = None


class AllModelsFailedError(ModelError):
    """Every client in the call's order was exhausted; ``attempts`` says what each did."""

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[AttemptRecord],
        call_id: str,
        kind: ErrorKind | str = ErrorKind.UNKNOWN,
    ) -> None:
        super().__init__(message, kind=kind)
        self.attempts = tuple(attempts)
        self.call_id = call_id


class DeadlineExceededError(AllModelsFailedError, TimeoutError):
    """The call's ``timeout`` or the policy's ``call_budget`` ran out before any success."""


class ConfigError(ValueError):
    """Bad configuration; the message names the key path and where it came from."""


class EventLogError(ValueError):
    """The event log cannot be opened, read or written as asked."""


class SchemaVersionError(EventLogError):
    """The event log was written by a newer version of this package."""
