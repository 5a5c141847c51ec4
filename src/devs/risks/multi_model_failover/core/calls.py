"""What one call is while it runs, what it returns, and how a failed attempt is described."""

from __future__ import annotations

import asyncio
import copy
import enum
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import anyio
import msgspec

from .cancellation import is_foreign_cancel
from .errors import AttemptRecord, ErrorKind, ModelError
from .scrub import describe_exception, scrub, without_prompt


class FailReason(enum.StrEnum):
    """Why a call failed: ``call_failed.reason``, and the reason in the error's message."""

    EXHAUSTED = "exhausted"  # every client of the order gave up
    DEADLINE = "deadline"  # the call's timeout or call_budget ran out
    BAD_REQUEST = "bad_request"  # a request no model could serve: failed fast
    FAIL_FAST = "fail_fast"  # an error whose action is ``fail`` (content_filter by default)
    MAX_TOTAL_ATTEMPTS = "max_total_attempts"  # the policy's cap on attempts in one call
    NO_CLIENTS = "no_clients"  # every client was in maintenance
    STREAM_INTERRUPTED = "stream_interrupted"  # a stream broke after delivering text


class GaveUp(Exception):
    """A client is exhausted for this call; ``stop`` ends the whole call."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        stop: FailReason | None = None,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stop = stop
        self.error = error


class EngineClosedError(RuntimeError):
    """The engine is closed (or closed while the call was in flight): no answer."""


class CallOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A successful call: the response unchanged, who served it and what it took.
    ``input_tokens``, ``output_tokens`` and ``cost`` (USD) add up every attempt of the call
    whose usage was reported (a billed failure included); None when none was."""

    response: Any
    model_id: str
    call_id: str
    attempts: int
    failovers: int
    latency: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


class Call:
    """The running state of one call (or stream)."""

    __slots__ = (
        "attempt",
        "attempt_started",
        "attempts",
        "budget",
        "call_id",
        "closed",
        "cut",
        "deadline",
        "ended",
        "failovers",
        "last_error",
        "last_resort",
        "model_id",
        "params",
        "prompt",
        "records",
        "spent",
        "start",
        "trial_slots",
        "trials",
    )

    def __init__(
        self,
        call_id: str,
        start: float,
        deadline: float,
        prompt: Any,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.call_id = call_id
        self.prompt = prompt
        self.params = params  # the caller's per-call request options; None when it gave none
        self.start = start
        self.deadline = deadline
        self.budget = deadline - start  # seconds: the timeout or call_budget it was given
        self.last_resort = False  # no client was in rotation when it started
        self.attempts = 0
        self.attempt = 0
        self.attempt_started = start
        self.failovers = 0
        self.model_id: str | None = None
        self.records: list[AttemptRecord] = []
        self.last_error: BaseException | None = None
        # Set while the call waits (an attempt or a backoff): what ``interrupt`` fires.
        self.cut: asyncio.Timeout | anyio.CancelScope | None = None
        self.closed = False  # the engine closed under it
        self.ended = False  # its terminal event is recorded
        # Unhealthy clients this call may try as their trial (one attempt each), and those
        # whose trial slot it still holds.
        self.trials: tuple[str, ...] = ()
        self.trial_slots: tuple[str, ...] = ()
        # The reported usage of its attempts so far: input and output tokens, cost.
        self.spent: tuple[int | None, int | None, float | None] = (None, None, None)

    def interrupt(self) -> None:
        """The engine is closing: cut the current wait short (the call then records it)."""
        self.closed = True
        cut = self.cut
        if isinstance(cut, asyncio.Timeout):
            cut.reschedule(asyncio.get_running_loop().time())
        elif cut is not None:
            cut.cancel()


class Failure:
    """One failed attempt, classified and scrubbed; ``error`` is what the client raised."""

    __slots__ = ("error", "kind", "message", "retry_after", "usage")

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        retry_after: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.error = error
        # What the provider had reported of the attempt's usage before it failed (a stream's).
        self.usage: object = None


class ScrubbedError(Exception):
    """Stands in for a client's exception whose own ``str`` or ``repr`` shows a key or the
    prompt however its arguments are cleaned: ``original`` names its type."""

    def __init__(self, original: str, message: str) -> None:
        super().__init__(message)
        self.original = original


def failure(exc: BaseException, prompt: Any) -> Failure:
    """Classify what a client raised. Its text, and the exception itself with those it was
    chained from, are cleaned of secrets and of the prompt, so that it can be kept on
    ``AllModelsFailedError.attempts`` and as its ``__cause__``."""
    kept = _keepable(exc, prompt)
    if isinstance(exc, ModelError):
        # ``deadline`` is the engine's word for its own deadline; from a client it is a timeout.
        kind = ErrorKind.TIMEOUT if exc.kind is ErrorKind.DEADLINE else exc.kind
        return Failure(kind, exc.message, exc.retry_after, kept)
    kind = ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.UNKNOWN
    return Failure(kind, describe_exception(kept, prompt=prompt), error=kept)


def _clean(text: str, prompt: Any) -> str:
    return without_prompt(scrub(text), prompt)


def _keepable(exc: BaseException, prompt: Any) -> BaseException:
    """``exc`` cleaned in place (its arguments, notes and chain), or a ``ScrubbedError`` in
    its place when its own text still shows a secret; a chain is cut at such a link."""
    if not _clean_in_place(exc, prompt):
        return ScrubbedError(type(exc).__name__, _clean(_text_of(exc, str), prompt))
    seen = {id(exc)}
    link = exc
    while (nxt := link.__cause__ or link.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        if not _clean_in_place(nxt, prompt):
            link.__cause__ = link.__context__ = None
            link.__suppress_context__ = True
            break
        link = nxt
    return exc


def _clean_in_place(exc: BaseException, prompt: Any) -> bool:
    """Clean ``exc``'s message, arguments and notes; whether its ``str`` and ``repr`` are
    clean now."""
    known: dict[str, str] = {}
    if isinstance(exc, ModelError):
        # Scrubbed of secrets when it was made: only the prompt is left to take out.
        original = exc.message
        exc.message = known[original] = without_prompt(original, prompt)
        if exc.code:
            exc.code = without_prompt(exc.code, prompt)
    texts = [a if isinstance(a, str) else str(a) for a in exc.args]
    cleaned = [known[text] if text in known else _clean(text, prompt) for text in texts]
    if cleaned != texts:
        exc.args = tuple(cleaned)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [_clean(str(note), prompt) for note in notes]
    if _shows_only_its_arguments(type(exc)):
        return True  # its str and repr are made of the arguments just cleaned
    return all((shown := _text_of(exc, show)) == _clean(shown, prompt) for show in (str, repr))


def _shows_only_its_arguments(kind: type[BaseException]) -> bool:
    """Whether ``str`` and ``repr`` of an exception of ``kind`` are made of its arguments (and,
    for ``ModelError``, its message and kind) only: no text of its own to check."""
    stock_repr = (BaseException.__repr__, ModelError.__repr__)
    return kind.__str__ is BaseException.__str__ and kind.__repr__ in stock_repr


def _text_of(exc: BaseException, show: Any) -> str:
    try:
        return str(show(exc))
    except Exception:  # noqa: BLE001 - a broken __str__ shows nothing we could leak
        return type(exc).__name__


def check_prompt(prompt: object) -> None:
    """``TypeError`` unless ``prompt`` is a str or a list of chat messages (mappings)."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list | tuple) and all(isinstance(m, Mapping) for m in prompt):
        return
    raise TypeError(
        f"prompt must be a str or a list of chat messages (dicts), got {type(prompt).__name__}"
    )


def check_params(params: object) -> Mapping[str, Any] | None:
    """The caller's per-call ``params``, frozen for the call (retries and failovers send the
    same, and a caller that changes its dict meanwhile changes nothing); None when empty.
    ``TypeError`` unless it is a mapping with str keys."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of request options, got {type(params).__name__}")
    if not params:
        return None
    for key in params:
        if not isinstance(key, str):
            raise TypeError(f"params keys must be str, got {key!r} ({type(key).__name__})")
    try:
        # Deep: a caller preparing its next call in the same lists changes nothing of this one.
        frozen = copy.deepcopy(dict(params))
    except Exception as exc:  # noqa: BLE001 - any object that cannot be copied
        raise TypeError(f"params cannot be copied for the call: {exc}") from None
    return MappingProxyType(frozen)


def no_params_failure(model_id: str, params: Mapping[str, Any]) -> Failure:
    """A client whose ``call`` (or ``stream``) takes no ``params`` cannot honour a call's
    request options: the attempt is a ``bad_request``, never a request without them."""
    keys = ", ".join(sorted(params))
    error = ModelError(
        f"client {model_id!r} takes no per-call params (given: {keys}); give its call() a "
        "params keyword to accept them",
        kind=ErrorKind.BAD_REQUEST,
        model_id=model_id,
    )
    return Failure(ErrorKind.BAD_REQUEST, error.message, error=error)


def check_positive(name: str, value: object) -> float:
    """``value`` as seconds, or ``ValueError`` naming ``name`` unless it is finite and > 0."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def timed_out(limit: float, by_attempt: bool, what: str, call: Call) -> Failure:
    """The attempt's own timeout (``what``, a timeout) or the call's deadline ran out."""
    if by_attempt:
        return Failure(ErrorKind.TIMEOUT, f"{what} {limit:g}s")
    budget = call.deadline - call.start
    return Failure(ErrorKind.DEADLINE, f"cut short by the call's deadline ({budget:g}s)")


def foreign_cancel_failure(exc: asyncio.CancelledError, prompt: Any) -> Failure:
    """A ``CancelledError`` out of a client: re-raised if the caller (or our timer) cancelled,
    else the client's failure (it awaited something another task cancelled)."""
    if not is_foreign_cancel(exc):
        raise exc
    return failure(exc, prompt)
