"""The event log's vocabulary: one msgspec tagged union of frozen structs.

Evolution rules (msgspec's): a new field always gets a default, a field's type never changes,
a tag is never renamed. ``SCHEMA_VERSION`` is stored with the log and rises only when an old
reader could no longer understand new rows.

``seq`` is 0 until the event store commits the event and numbers it; projections never read it,
which is what lets the live fold and the replayed fold agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, TypeAlias

import msgspec

from .errors import ErrorKind
from .health import HealthState

SCHEMA_VERSION: Final = 2


# ``gc=False``: an event never refers to itself, so the garbage collector need not track it.
# Reading a long log makes millions of them; tracked, they made full collections (which stop
# every thread, the event loop's included) take hundreds of milliseconds.
class _Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    tag_field="type",
    tag=True,
    gc=False,
):
    seq: int = 0
    at: datetime

    @property
    def type(self) -> str:
        """The event's tag, as stored in the ``type`` field."""
        return self.__struct_config__.tag  # type: ignore[return-value]


# What the events of an engine record, for a reader that must know what an absent field means
# (``failover whatif``): 3 since ``call_started.stream`` (absent: a call, not a stream) and
# ``attempt_failed.chunks``; 2 since ``call_started.timeout`` (absent: the caller gave none) and
# ``attempt_failed.retry_after``; 1 (absent) before.
EVENTS_VERSION: Final = 3


class EngineStarted(_Event, tag="engine_started", frozen=True):
    """An engine opened the log: its configured order and policies, and ``events_version``:
    what its events record (see ``EVENTS_VERSION``)."""

    models: tuple[str, ...]
    retry_policy: dict[str, object] = {}
    health_policy: dict[str, object] = {}
    events_version: int = 1


class EngineStopped(_Event, tag="engine_stopped", frozen=True):
    """An engine closed cleanly."""


class CallStarted(_Event, tag="call_started", frozen=True):
    """A call began; ``order`` is the rotation it will try. No prompt text is stored.
    ``timeout``: the caller's own timeout in seconds, as given (None: it gave none); the
    call's budget is the smaller of it and the policy's ``call_budget``. ``stream``: the
    recovery of a stream (``none``, ``restart``, ``continue``); None for a call."""

    call_id: str
    order: tuple[str, ...]
    last_resort: bool = False
    prompt_chars: int | None = None
    prompt_hash: str | None = None
    timeout: float | None = None
    stream: str | None = None


class AttemptStarted(_Event, tag="attempt_started", frozen=True):
    """An attempt on one client; ``attempt`` counts from 1 per client in this call.
    ``trial``: the client is unhealthy and this call tries it as its trial."""

    call_id: str
    model_id: str
    attempt: int
    trial: bool = False


class AttemptSucceeded(_Event, tag="attempt_succeeded", frozen=True):
    """The client answered; ``latency`` in seconds. ``skipped``: malformed stream events the
    client skipped on the way. ``input_tokens`` / ``output_tokens``: the usage the client
    reported (None: not reported); ``cost`` in USD, when the model has a price."""

    call_id: str
    model_id: str
    attempt: int
    latency: float
    skipped: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None


class AttemptFailed(_Event, tag="attempt_failed", frozen=True):
    """The client failed. ``final``: the call gives up on this client now.
    ``counts``: the failure counts against the client's health. Tokens and ``cost`` only when
    the client reported usage for the failed attempt (``ModelError(usage=...)``).
    ``retry_after``: the wait the failure asked for (Retry-After), also when the engine did
    not wait (it would not fit the call's budget: no ``backoff`` follows to hold it).
    ``chunks``: a stream that broke after delivering this many chunks (None: before any)."""

    call_id: str
    model_id: str
    attempt: int
    latency: float
    error_kind: ErrorKind
    message: str = ""
    final: bool = False
    counts: bool = True
    skipped: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    retry_after: float | None = None
    chunks: int | None = None


class Backoff(_Event, tag="backoff", frozen=True):
    """The engine waits ``delay`` seconds before the next attempt on the same client."""

    call_id: str
    model_id: str
    attempt: int
    delay: float
    retry_after: float | None = None


class RetryBudgetExhausted(_Event, tag="retry_budget_exhausted", frozen=True):
    """The process-wide retry budget refused a retry; the engine fails over instead."""

    call_id: str
    model_id: str


class Failover(_Event, tag="failover", frozen=True):
    """The call moves from one client to the next, for ``reason`` (an error kind)."""

    call_id: str
    from_model: str
    to_model: str
    reason: ErrorKind


class CallSucceeded(_Event, tag="call_succeeded", frozen=True):
    """The call returned the answer of ``model_id``."""

    call_id: str
    model_id: str
    attempts: int
    failovers: int
    latency: float


class CallFailed(_Event, tag="call_failed", frozen=True):
    """The call raised: every client exhausted, deadline, bad request or attempt cap."""

    call_id: str
    reason: str
    error_kind: ErrorKind
    attempts: int
    failovers: int
    latency: float


class CallCancelled(_Event, tag="call_cancelled", frozen=True):
    """The call ended without an outcome: its caller cancelled it, or (``reason`` is
    ``engine_closed``) the engine closed under it. Nothing is held against any model.

    ``supersedes`` names the terminal event recorded just before (``call_succeeded`` or
    ``call_failed``) when the caller was cancelled while that outcome was being committed:
    the caller never saw it, so this event is the call's outcome."""

    call_id: str
    model_id: str | None = None
    attempts: int = 0
    latency: float = 0.0
    reason: str = ""
    supersedes: str | None = None


class HealthProbe(_Event, tag="health_probe", frozen=True):
    """One health check of one client."""

    model_id: str
    ok: bool
    latency: float
    error_kind: ErrorKind | None = None
    message: str = ""


class StateChanged(_Event, tag="state_changed", frozen=True):
    """The health machine moved a client from one state to another."""

    model_id: str
    from_state: HealthState
    to_state: HealthState
    reason: str = ""


class Maintenance(_Event, tag="maintenance", frozen=True):
    """An operator took a client out of rotation (``on``) or put it back."""

    model_id: str
    on: bool
    reason: str = ""
    by: str = ""


Event: TypeAlias = (
    EngineStarted
    | EngineStopped
    | CallStarted
    | AttemptStarted
    | AttemptSucceeded
    | AttemptFailed
    | Backoff
    | RetryBudgetExhausted
    | Failover
    | CallSucceeded
    | CallFailed
    | CallCancelled
    | HealthProbe
    | StateChanged
    | Maintenance
)

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.__struct_config__.tag: cls for cls in Event.__args__
}

TERMINAL_TYPES: Final = frozenset({"call_succeeded", "call_failed", "call_cancelled"})


def _enc_hook(obj: object) -> object:
    # datetime subclasses (freezegun's FakeDatetime) are not encoded natively.
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    """The event as JSON bytes (the stored form)."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    """One event from its JSON form; raises ``msgspec.ValidationError``/``DecodeError``."""
    event: Event = _decoder.decode(data)
    return event
