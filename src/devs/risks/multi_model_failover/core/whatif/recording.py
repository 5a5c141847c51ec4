"""The recorded run, read once: what happened, and what the replay must do again.

One pass over the log's events (from the engine start in force when the window opens) gives:

- the engines that ran, with the policies they recorded (``engine_started``);
- every call: when it started, each attempt (model, start, end, outcome, error kind, latency,
  Retry-After, usage) and what the engine decided after a failed one (a backoff of so long, a
  retry the retry budget refused, or giving up on the model), how the caller ended it;
- every probe, with its outcome and latency;
- every operator action, with the moment the engine took it in (an action written by another
  process, ``failover maintenance``, reaches a running engine only when it next reads the log:
  the calls it started meanwhile show it had not seen it yet);
- the recorded side's figures (``Tally``).

Times become virtual seconds since ``origin``: microseconds, as the log stamps them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from ..backoff import backoff_delay
from ..errors import ErrorKind
from ..events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Backoff,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    EngineStarted,
    EngineStopped,
    Event,
    HealthProbe,
    Maintenance,
    RetryBudgetExhausted,
    StateChanged,
)
from ..health import HealthState
from ..policies import HealthPolicy, RetryPolicy
from ..projections import Snapshot, apply
from .change import merged_health, merged_retry
from .operators import Actions, MaintenanceAction
from .simclock import INF
from .tally import Tally, usage_of_event

# The engine's own timeouts: the model said nothing within the time it was given.
_SILENT_ATTEMPT: Final = ("attempt timed out after", "no first chunk within")
_SILENT_PROBE: Final = "probe timed out after"


class Draw:
    """The random draw behind a recorded backoff: its bounds, the jitter that used it, and
    (when the log shows it) its value and its place between the bounds (``fraction``)."""

    __slots__ = ("fraction", "high", "jitter", "low", "value")

    def __init__(self, low: float, high: float, jitter: str) -> None:
        self.low = low
        self.high = high
        self.jitter = jitter
        self.value: float | None = None
        self.fraction: float | None = None


class Observation:
    """One thing the log saw a model do: an attempt or a probe."""

    __slots__ = (
        "attempt",
        "call_id",
        "decision",
        "delay",
        "draw",
        "end",
        "kind",
        "latency",
        "message",
        "mid_stream",
        "model_id",
        "ok",
        "prio",
        "probe",
        "response",
        "retry_after",
        "retry_after_known",
        "silence",
        "start",
        "start_prio",
        "trial",
        "usage",
    )

    def __init__(self, model_id: str, start: float, *, probe: bool = False) -> None:
        self.model_id = model_id
        self.start = start
        self.probe = probe
        self.end: float | None = None  # None: the log never saw it end (cancelled, crashed)
        self.prio = INF  # the seq of the event that ended it
        self.start_prio = INF  # the seq of the event that started it
        self.latency = 0.0
        self.ok = False
        self.kind: ErrorKind | None = None
        self.silence = False  # the engine's timer ended it: no answer at all
        self.mid_stream = False  # a stream that broke after its first chunk
        self.message = ""
        self.retry_after: float | None = None
        self.retry_after_known = False
        self.usage: tuple[int | None, int | None, float | None] = (None, None, None)
        self.call_id = ""
        self.attempt = 0
        self.trial = False
        # After a failed attempt: "backoff", "refused" (the retry budget), "final" (gave up).
        self.decision: str | None = None
        self.delay: float | None = None
        self.draw: Draw | None = None
        self.response: object = None

    @property
    def done(self) -> bool:
        """Whether the log saw it end."""
        return self.end is not None


class CallRecord:
    """One recorded call, as the replay needs it."""

    __slots__ = (
        "attempts",
        "call_id",
        "cancel_at",
        "cancel_prio",
        "commit_cancel_at",
        "current",
        "deadline_hint",
        "deadline_seen",
        "end",
        "ended",
        "engine",
        "fits_beyond",
        "last_at",
        "last_prio",
        "last_resort",
        "prev_delay",
        "prio",
        "recovery",
        "refused",
        "start",
        "timeout",
    )

    def __init__(self, call_id: str, start: float, prio: float, engine: int) -> None:
        self.call_id = call_id
        self.start = start
        self.prio = prio
        self.engine = engine
        self.last_resort = False
        # A stream's recovery ("none", "restart", "continue"): from ``call_started.stream``,
        # or, in logs from before it, from how a break after the first chunk went on (a
        # stream that did not break is then a call). None: replayed as a call.
        self.recovery: str | None = None
        self.attempts: dict[tuple[str, int], Observation] = {}
        self.current: Observation | None = None
        self.prev_delay: dict[str, float] = {}
        self.refused: str | None = None  # the model whose retry the budget just refused
        self.deadline_hint: float | None = None  # seconds from the start to its deadline
        self.deadline_seen: float | None = None  # ... where the log shows it cut something
        self.fits_beyond: float | None = None  # ... later than this: a backoff fitted before it
        # The caller's own timeout: recorded on call_started (logs before it was: inferred
        # from where it cut the call, see ``finish``).
        self.timeout: float | None = None
        self.end: float | None = None
        self.ended = False
        self.cancel_at: float | None = None  # the caller cancelled it then
        self.cancel_prio = INF
        self.commit_cancel_at: float | None = None  # ... while its outcome was committed
        self.last_at = start
        self.last_prio = prio

    def hint_deadline(self, seconds: float) -> None:
        """The log shows the call's deadline at most ``seconds`` after its start."""
        if self.deadline_hint is None or seconds < self.deadline_hint:
            self.deadline_hint = seconds

    def saw_deadline(self, seconds: float) -> None:
        """The log shows the call's deadline cut something ``seconds`` after its start."""
        self.hint_deadline(seconds)
        if self.deadline_seen is None or seconds < self.deadline_seen:
            self.deadline_seen = seconds


class EngineRun:
    """One engine's run: when it started (and stopped), its models and policies."""

    __slots__ = (
        "health",
        "health_raw",
        "models",
        "prio",
        "retry",
        "retry_raw",
        "start",
        "stop",
        "stop_prio",
        "timeouts_known",
    )

    def __init__(self, event: EngineStarted, start: float) -> None:
        self.start = start
        # Its calls record the caller's timeout: one without it had none.
        self.timeouts_known = event.events_version >= 2
        self.prio = float(event.seq)
        self.models = tuple(event.models)
        self.retry_raw: dict[str, Any] = dict(event.retry_policy)
        self.health_raw: dict[str, Any] = dict(event.health_policy)
        try:
            self.retry: RetryPolicy = merged_retry(self.retry_raw, {})
            self.health: HealthPolicy = merged_health(self.health_raw, {})
        except ValueError as exc:
            raise ValueError(
                f"the engine started at {event.at.isoformat()} recorded a policy this version "
                f"cannot read: {exc}"
            ) from None
        self.stop: float | None = None
        self.stop_prio = INF


class Recording:
    """The recorded run (see the module docstring); built by ``record``."""

    def __init__(
        self, origin: datetime, initial: Snapshot, since: datetime | None, until: datetime | None
    ) -> None:
        self.origin = origin
        self.initial = initial
        self.since = since
        self.until = until
        self.engines: list[EngineRun] = []
        self.calls: list[CallRecord] = []
        self.probes: list[Observation] = []
        self.attempts: list[Observation] = []
        self.maintenance: list[MaintenanceAction] = []
        self.covered: set[str] = set()
        self.models: dict[str, None] = dict.fromkeys(initial.states)
        self.end = 0.0  # the last instant the replay must reach
        self.tally = Tally(
            since=since, until=until, covered=self.covered, decide=True, initial=initial
        )

    def seconds(self, at: datetime) -> float:
        """``at`` as virtual seconds since ``origin``."""
        return (at - self.origin).total_seconds()

    def instant(self, seconds: float) -> datetime:
        """Virtual ``seconds`` as a wall-clock time."""
        return self.origin + timedelta(seconds=seconds)

    def engine_at(self, seconds: float) -> EngineRun:
        """The engine running at virtual ``seconds`` (the latest started by then)."""
        found = self.engines[0]
        for engine in self.engines:
            if engine.start > seconds:
                break
            found = engine
        return found


def record(
    events: Iterable[Event],
    *,
    initial: Snapshot | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Recording:
    """Read the recorded run from ``events`` (oldest first, from the engine start in force at
    ``since``; events before the first ``engine_started`` only add to the state it starts
    from). ``initial``: the fold of the log before them. Raises ``ValueError`` when no engine
    started in them."""
    start = (  # a copy: the events before the engine start are folded into it
        Snapshot()
        if initial is None
        else msgspec.msgpack.decode(msgspec.msgpack.encode(initial), type=Snapshot)
    )
    reader = _Reader(start, since, until)
    for event in events:
        reader.read(event)
    return reader.finish()


class _Reader:
    def __init__(self, initial: Snapshot, since: datetime | None, until: datetime | None) -> None:
        self.initial = initial
        self.since = since
        self.until = until
        self.rec: Recording | None = None
        self.calls: dict[str, CallRecord] = {}
        # Operator actions per model during the running engine's run (``operators``), the
        # log's own view of each model, and the models whose health changed since an
        # operator last took them out of maintenance (one of those left out of an order may
        # be unhealthy rather than in maintenance).
        self.actions: dict[str, Actions] = {}
        self.in_maintenance = {
            m: s.state is HealthState.MAINTENANCE for m, s in initial.states.items()
        }
        self.touched: set[str] = set()
        self.until_s = INF
        self.last = 0.0

    def read(self, event: Event) -> None:
        rec = self.rec
        if rec is None:
            if type(event) is not EngineStarted:
                apply(self.initial, event)  # before any engine: only the state it starts from
                return
            origin = event.at.replace(microsecond=0)
            rec = self.rec = Recording(origin, self.initial, self.since, self.until)
            if self.until is not None:
                self.until_s = rec.seconds(self.until)
        at = rec.seconds(event.at)
        self.last = at
        rec.tally.add(event)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, at)
        call_id = getattr(event, "call_id", None)
        if call_id is not None:
            call = self.calls.get(call_id)
            if call is not None:
                call.last_at, call.last_prio = at, float(event.seq)

    # -- engines -------------------------------------------------------------------------

    def engine_started(self, event: EngineStarted, at: float) -> None:
        assert self.rec is not None  # noqa: S101 - set by read()
        self.rec.engines.append(EngineRun(event, at))
        self.rec.models.update(dict.fromkeys(event.models))
        for actions in self.actions.values():  # a starting engine reads the whole log
            actions.place(closing=(at, event.seq - 0.5))
        self.actions.clear()

    def engine_stopped(self, event: EngineStopped, at: float) -> None:
        assert self.rec is not None  # noqa: S101 - set by read()
        engine = self.rec.engines[-1]
        engine.stop, engine.stop_prio = at, float(event.seq)

    # -- calls ---------------------------------------------------------------------------

    def call_started(self, event: CallStarted, at: float) -> None:
        rec = self.rec
        assert rec is not None  # noqa: S101 - set by read()
        call = CallRecord(event.call_id, at, float(event.seq), len(rec.engines) - 1)
        call.last_resort = event.last_resort
        call.timeout = event.timeout
        call.recovery = event.stream
        self.calls[event.call_id] = call
        if at <= self.until_s:
            rec.calls.append(call)
        if self.actions:
            models = rec.engines[-1].models
            for model_id, actions in self.actions.items():
                if model_id in event.order:
                    actions.sign(at, event.seq, in_maintenance=False)
                elif model_id in models and model_id not in self.touched:
                    # Left out, and not unhealthy: in maintenance in the engine's view.
                    actions.sign(at, event.seq, in_maintenance=True)

    def attempt_started(self, event: AttemptStarted, at: float) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            return
        obs = Observation(event.model_id, at)
        obs.call_id, obs.attempt, obs.trial = event.call_id, event.attempt, event.trial
        obs.start_prio = float(event.seq)
        call.attempts[(event.model_id, event.attempt)] = call.current = obs
        actions = self.actions.get(event.model_id)
        if actions is not None:
            actions.sign(at, event.seq, in_maintenance=False)

    def attempt_succeeded(self, event: AttemptSucceeded, at: float) -> None:
        obs = self._ended(event, at)
        if obs is not None:
            obs.ok = True

    def attempt_failed(self, event: AttemptFailed, at: float) -> None:
        obs = self._ended(event, at)
        if obs is None:
            return
        call = self.calls[event.call_id]
        kind = obs.kind = ErrorKind(event.error_kind)
        obs.message = event.message
        obs.silence = kind is ErrorKind.DEADLINE or (
            kind is ErrorKind.TIMEOUT and event.message.startswith(_SILENT_ATTEMPT)
        )
        if kind is ErrorKind.DEADLINE:
            call.saw_deadline(at - call.start)
        if event.retry_after is not None:
            obs.retry_after, obs.retry_after_known = event.retry_after, True
        if event.chunks is not None or event.message.startswith(
            f"stream from {event.model_id} broke after "
        ):
            # A stream that broke after its first chunk: not the policy's decision. (The
            # message says so in logs from before ``chunks``, and how the engine went on.)
            obs.mid_stream, obs.decision = True, "final"
            call.refused = None
            if call.recovery is None:
                call.recovery = "none" if _NOT_FAILED_OVER in event.message else "restart"
            return
        if not event.final:
            return  # a backoff follows
        refused = call.refused == event.model_id
        call.refused = None
        obs.decision = "refused" if refused else "final"
        policy = self._policy(call)
        previous = call.prev_delay.get(event.model_id)
        obs.draw = recorded_draw(policy, event.attempt, previous)
        assert self.rec is not None  # noqa: S101 - set by read()
        states = self.rec.tally.states
        unhealthy = states.state_of(obs.model_id).state is HealthState.UNHEALTHY
        if refused or not _only_the_deadline(policy, call, obs, unhealthy=unhealthy):
            return
        longest = longest_wait(policy, event.attempt, previous)
        if obs.retry_after_known and obs.retry_after is not None:
            longest = max(longest, obs.retry_after)
        if self.rec.engines[call.engine].timeouts_known and _fits(call, policy, at + longest):
            self._gave_up_in_time(call, obs, event, at)
            return
        # The engine gave up on a model it would have retried: the wait would have run past
        # the call's deadline.
        if kind is ErrorKind.RATE_LIMITED:
            if not obs.retry_after_known:
                # A log from before attempt_failed held Retry-After: the one behind this was
                # at least as long as what was left of the call.
                obs.retry_after = max(0.0, call.start + policy.call_budget - at) + 1e-3
                obs.retry_after_known = True
            return
        if at + longest < call.start + policy.call_budget:
            # Even the longest wait fits the policy's budget: the caller's own timeout was
            # shorter, at most this long (the replay draws that longest wait again).
            call.hint_deadline(at - call.start + longest - 1e-6)

    def _gave_up_in_time(
        self, call: CallRecord, obs: Observation, event: AttemptFailed, at: float
    ) -> None:
        """The engine gave up on a model that the policy would have retried, though even the
        longest wait fitted the call's deadline (known: its caller's timeout is recorded)."""
        if call.last_resort:
            # In a last-resort call, only the model being unhealthy ends its retries: the
            # engine had it unhealthy, not in the maintenance another writer's action has it
            # in by now in the log.
            actions = self.actions.get(event.model_id)
            if actions is not None:
                actions.sign(at, event.seq, in_maintenance=False)

    def _ended(self, event: AttemptSucceeded | AttemptFailed, at: float) -> Observation | None:
        call = self.calls.get(event.call_id)
        if call is None:
            return None
        obs = call.attempts.get((event.model_id, event.attempt))
        if obs is None:
            return None
        obs.end, obs.prio, obs.latency = at, float(event.seq), event.latency
        obs.usage = usage_of_event(event)
        assert self.rec is not None  # noqa: S101 - set by read()
        self.rec.attempts.append(obs)
        return obs

    def backoff(self, event: Backoff, at: float) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            return
        obs = call.attempts.get((event.model_id, event.attempt))
        if obs is None:
            return
        obs.decision, obs.delay = "backoff", event.delay
        obs.retry_after, obs.retry_after_known = event.retry_after, True
        obs.draw = recorded_draw(
            self._policy(call),
            event.attempt,
            call.prev_delay.get(event.model_id),
            delay=event.delay,
            retry_after=event.retry_after if obs.kind is ErrorKind.RATE_LIMITED else None,
        )
        call.prev_delay[event.model_id] = event.delay
        ends = at - call.start + event.delay  # the engine found it ended before the deadline
        if call.fits_beyond is None or ends > call.fits_beyond:
            call.fits_beyond = ends

    def budget_refused(self, event: RetryBudgetExhausted, at: float) -> None:
        call = self.calls.get(event.call_id)
        if call is not None:
            call.refused = event.model_id

    def call_ended(self, event: CallSucceeded | CallFailed, at: float) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            return
        call.ended, call.end = True, at
        if isinstance(event, CallFailed) and event.reason == "deadline":
            call.saw_deadline(event.latency)

    def call_cancelled(self, event: CallCancelled, at: float) -> None:
        call = self.calls.get(event.call_id)
        if call is None:
            return
        if event.supersedes is not None and call.end is not None:
            call.commit_cancel_at = call.end
        call.ended, call.end = True, at
        call.cancel_at, call.cancel_prio = at, float(event.seq)

    def _policy(self, call: CallRecord) -> RetryPolicy:
        assert self.rec is not None  # noqa: S101 - set by read()
        return self.rec.engines[call.engine].retry

    # -- probes and operators ------------------------------------------------------------

    def probe(self, event: HealthProbe, at: float) -> None:
        rec = self.rec
        assert rec is not None  # noqa: S101 - set by read()
        # Started ``latency`` before it ended: on the log's microsecond grid.
        start = round((at - event.latency) * 1e6) / 1e6
        obs = Observation(event.model_id, start, probe=True)
        obs.end, obs.prio, obs.latency = at, float(event.seq), event.latency
        kind = None if event.error_kind is None else ErrorKind(event.error_kind)
        obs.ok, obs.kind, obs.message = event.ok, kind, event.message
        obs.silence = kind is ErrorKind.TIMEOUT and event.message.startswith(_SILENT_PROBE)
        rec.probes.append(obs)
        rec.models[event.model_id] = None
        actions = self.actions.get(event.model_id)
        if actions is not None:  # checked as the probe began
            actions.sign(start, event.seq, in_maintenance=False)

    def maintenance(self, event: Maintenance, at: float) -> None:
        rec = self.rec
        assert rec is not None  # noqa: S101 - set by read()
        model_id = event.model_id
        action = MaintenanceAction(event, at)
        rec.maintenance.append(action)
        rec.models[model_id] = None
        actions = self.actions.get(model_id)
        if actions is None:
            actions = self.actions[model_id] = Actions(self.in_maintenance.get(model_id, False))
        actions.actions.append(action)
        self.in_maintenance[model_id] = event.on
        if not event.on:
            self.touched.discard(model_id)

    def state_changed(self, event: StateChanged, at: float) -> None:
        self.touched.add(event.model_id)
        actions = self.actions.get(event.model_id)
        if actions is not None:
            # The engine judged the model's health: it was not in maintenance in its view.
            actions.sign(at, event.seq, in_maintenance=False)

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> Recording:
        rec = self.rec
        if rec is None:
            raise ValueError(
                "no engine_started event in the events given: the recorded configuration "
                "(models and policies) is unknown"
            )
        for actions in self.actions.values():
            actions.place(closing=None)
        end = 0.0
        for call in rec.calls:
            run = rec.engines[call.engine]
            call.timeout = _callers_timeout(call, run.retry.call_budget, known=run.timeouts_known)
            if not call.ended:  # the log ends (or the process died) with the call open
                call.cancel_at, call.cancel_prio = call.last_at, call.last_prio + 0.5
            end = max(end, call.last_at)
        window_end = min(self.last, self.until_s)
        rec.end = max(end, window_end)
        return rec


# How the engine's message on a stream that broke without failing over reads (``streaming``).
_NOT_FAILED_OVER: Final = "; not failed over:"


def _fits(call: CallRecord, policy: RetryPolicy, instant: float) -> bool:
    """Whether ``instant`` is before the deadline of ``call`` (its recorded timeout known)."""
    budget = policy.call_budget if call.timeout is None else min(policy.call_budget, call.timeout)
    return instant < call.start + budget - 1e-3


def _callers_timeout(call: CallRecord, budget: float, *, known: bool) -> float | None:
    """The caller's own timeout to replay ``call`` with (None: the policy's budget).

    ``call_started.timeout`` says what the caller gave. Where the log shows that deadline cut
    something, its instant is kept instead: the replay's call starts at the recorded stamp,
    which the engine took microseconds after it set the deadline, and the log's instant is
    what reproduces the log. An engine from before ``timeout`` was recorded (not ``known``):
    the deadline the log shows, or bounds it by, when shorter than the budget.
    """
    recorded = call.timeout
    if not known:
        hint = call.deadline_hint
        return max(hint, 1e-6) if hint is not None and hint < budget - 1e-6 else None
    if recorded is None or recorded >= budget:
        return recorded  # the policy's budget was the shorter: the caller's stays for a what-if
    return max(_as_the_log_shows(call, recorded), 1e-6)


# How far (seconds) the log's own bounds may move a recorded timeout: the microseconds between
# the engine's reading of its clock and the stamp on ``call_started``, never more.
_NUDGE: Final = 1e-3


def _as_the_log_shows(call: CallRecord, timeout: float) -> float:
    """``timeout`` moved (by microseconds) to agree with what the log shows of the deadline:
    where it cut something, before a wait the engine found too long, after one it did not."""
    seen = call.deadline_seen
    if seen is not None and abs(seen - timeout) < _NUDGE:
        return seen
    upper, lower = call.deadline_hint, call.fits_beyond
    if upper is not None and upper < timeout and timeout - upper < _NUDGE:
        timeout = upper
    if lower is not None and timeout <= lower and lower - timeout < _NUDGE:
        timeout = lower + 1e-6
    return timeout


def _only_the_deadline(
    policy: RetryPolicy, call: CallRecord, obs: Observation, *, unhealthy: bool
) -> bool:
    """Whether the recorded policy gives no other reason to give up after ``obs`` (a failed
    attempt it did not retry) than the wait running past the call's deadline. ``unhealthy``:
    the model's state in the log then."""
    kind = obs.kind or ErrorKind.UNKNOWN
    if policy.action(kind) != "retry" or obs.attempt >= policy.max_attempts or obs.trial:
        return False
    if call.last_resort and unhealthy:
        return False  # every model is down: one attempt each, by design
    cap = policy.max_total_attempts
    return cap is None or len(call.attempts) < cap


def longest_wait(policy: RetryPolicy, n: int, previous: float | None) -> float:
    """The longest backoff ``policy`` can draw after the ``n``-th failure on a model."""
    probe = _Bounds()
    probe.high = True
    return backoff_delay(policy, n, probe, previous)


class _Bounds(random.Random):
    """Answers ``backoff_delay``'s one draw with a chosen value (``value``, else the lowest
    or, with ``high``, the highest), noting the bounds asked."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: tuple[float, float] | None = None
        self.value: float | None = None
        self.high = False

    def uniform(self, a: float, b: float) -> float:
        self.bounds = (a, b)
        if self.value is not None:
            return self.value
        return b if self.high else a


def recorded_draw(
    policy: RetryPolicy,
    n: int,
    previous: float | None,
    *,
    delay: float | None = None,
    retry_after: float | None = None,
) -> Draw | None:
    """The draw behind the ``n``-th backoff on a model under ``policy`` (None: the policy
    draws nothing). With the recorded ``delay``, its value: the one that gives exactly that
    delay again (when Retry-After set the delay, a value that keeps it so)."""
    probe = _Bounds()
    low_delay = backoff_delay(policy, n, probe, previous)
    if probe.bounds is None:
        return None
    low, high = probe.bounds
    draw = Draw(low, high, policy.jitter)
    if delay is None:
        return draw
    probe.high = True
    high_delay = backoff_delay(policy, n, probe, previous)
    if delay > high_delay or delay < low_delay:
        # Retry-After, longer than any draw, set the delay: any value up to it gives it again.
        draw.value = low
        return draw
    value = min(max(delay - (low_delay - low), low), high)
    for _ in range(8):  # the float nearest to the inverse may miss by an ulp or two
        probe.value = value
        got = backoff_delay(policy, n, probe, previous)
        if retry_after is not None:
            got = max(got, retry_after)
        if got == delay:
            break
        value = math.nextafter(value, math.inf if got < delay else -math.inf)
        value = min(max(value, low), high)
    draw.value = value
    draw.fraction = (value - low) / (high - low) if high > low else None
    return draw


_HANDLERS: Final[dict[type[Any], Callable[[_Reader, Any, float], None]]] = {
    EngineStarted: _Reader.engine_started,
    EngineStopped: _Reader.engine_stopped,
    CallStarted: _Reader.call_started,
    AttemptStarted: _Reader.attempt_started,
    AttemptSucceeded: _Reader.attempt_succeeded,
    AttemptFailed: _Reader.attempt_failed,
    Backoff: _Reader.backoff,
    RetryBudgetExhausted: _Reader.budget_refused,
    CallSucceeded: _Reader.call_ended,
    CallFailed: _Reader.call_ended,
    CallCancelled: _Reader.call_cancelled,
    HealthProbe: _Reader.probe,
    Maintenance: _Reader.maintenance,
    StateChanged: _Reader.state_changed,
}
