"""The model of the world: how each model answers an attempt or a probe at a given moment.

The log holds each model's observed behaviour over time: every attempt and every probe, with
its outcome, error kind, latency, Retry-After and usage. An answer comes from it this way:

- **Observed.** An attempt the replay makes on the same model, for the same call, with the same
  attempt number as a recorded one, and within ``MATCH`` (50 ms) of its recorded start, *is*
  that attempt: it gets the recorded answer, at the instant the log saw it (so that a replay
  a few microseconds off the log keeps the log's order among things that happen together).
  A recorded probe replayed at its instant is observed too.
- **Inferred** (counted): any other attempt gets the answer of the model's *nearest
  observation in time* (attempts and probes alike, by start; a tie goes to the earlier one).
  From an attempt: the same outcome, error kind, latency, Retry-After and usage. From a probe:
  a failed probe fails the attempt the same way (a probe that timed out is a silence); one that
  succeeded answers with the latency and usage of the model's nearest successful attempt. A
  probe the recorded run did not make gets the nearest recorded probe's answer (without any, the
  nearest attempt's: a success, or a failure of a kind that counts against health, fails it).
- A **silence** (the recorded attempt or probe was cut by the engine's own timer) stays a
  silence: the model does not answer, however long the replay waits.
- A failure the recorded run did not retry does not show its Retry-After (the log keeps it on
  the backoff); a rate limit without one gets the model's nearest known one (counted when a
  backoff waits on it). Where the recorded run gave up on a retry only because the wait would
  have passed the call's deadline, the hint is at least what was left of the call.
- A model the log never saw answer fails at once (kind ``unknown``), counted.

Backoff delays come from the log. A recorded backoff's random draw is found again from its
delay; an engine asking for the same draw (same bounds: same policy, attempt and previous
delay, after an observed attempt) gets it exactly, and where the log shows the engine gave up
instead (the wait would have passed the deadline) or the retry budget refused, a draw that
leads to the same decision. Under other bounds a recorded draw keeps its place between them; a
draw the log never made is seeded by the call, model and attempt (counted).

The retry budget, too: where the engine asks it about an observed attempt with the recorded
budget keys, it gets the recorded answer (the budget's one-second slots fall where the recorded
process's clock put them, which the log does not show); otherwise the budget decides.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

from ..errors import ErrorKind
from ..responses import ModelResponse, Usage
from ..retry_budget import RetryBudget
from .recording import CallRecord, Draw, Observation, Recording
from .simclock import INF, SimClock

MATCH: Final = 0.05  # seconds: a replayed attempt this close to the recorded one is that one
_PLAIN: Final = ModelResponse(text="", model="")


class Answer:
    """How a model answers one attempt or probe of the replay."""

    __slots__ = (
        "end",
        "hinted",
        "kind",
        "latency",
        "message",
        "mid_stream",
        "observed",
        "ok",
        "prio",
        "recorded",
        "response",
        "retry_after",
        "silence",
    )

    def __init__(self) -> None:
        self.ok = False
        self.silence = False
        self.kind = ErrorKind.UNKNOWN
        self.message = ""
        self.latency = 0.0
        self.mid_stream = False  # as a stream: it fails after its first chunk
        self.end: float | None = None  # an absolute instant (observed at the same instant)
        self.prio = INF
        self.retry_after: float | None = None
        self.response: object = _PLAIN
        self.observed = False
        self.recorded: Observation | None = None  # the recorded attempt it is, when observed
        self.hinted = False  # its Retry-After is the model's nearest known one


class _Times:
    """Observations of one model sorted by start, for the nearest one to an instant."""

    __slots__ = ("items", "starts")

    def __init__(self, items: Sequence[Observation]) -> None:
        self.items = sorted(items, key=lambda o: o.start)
        self.starts = [o.start for o in self.items]

    def nearest(self, t: float) -> Observation | None:
        """The observation starting nearest to ``t``; a tie goes to the earlier one."""
        index = bisect_left(self.starts, t)
        before = self.items[index - 1] if index > 0 else None
        after = self.items[index] if index < len(self.items) else None
        if before is None or (after is not None and after.start - t < t - before.start):
            return after
        return before


class World:
    """Answers the replay's attempts and probes from a ``Recording``; see the module docstring.

    Counts what it inferred (reset with ``reset`` before each replay).
    """

    def __init__(self, rec: Recording) -> None:
        done = [o for o in rec.attempts if o.done]
        by_model: dict[str, list[Observation]] = {}
        for obs in (*done, *rec.probes):
            by_model.setdefault(obs.model_id, []).append(obs)
        self._all = {m: _Times(items) for m, items in by_model.items()}
        self._probes = {m: _Times([o for o in items if o.probe]) for m, items in by_model.items()}
        self._successes = {
            m: _Times([o for o in items if o.ok and not o.probe]) for m, items in by_model.items()
        }
        self._hints = {
            m: _Times(
                [o for o in items if o.kind is ErrorKind.RATE_LIMITED and o.retry_after is not None]
            )
            for m, items in by_model.items()
        }
        # The answer to each recorded attempt replayed as itself, made once for every replay
        # (held here, not on the observation: an answer refers to its observation).
        self._exact: dict[Observation, Answer] = {}
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (a new replay)."""
        self.answers = 0
        self.inferred_attempts = 0
        self.inferred_probes = 0
        self.inferred_draws = 0
        self.inferred_retry_after = 0
        self.last: Answer | None = None  # the latest attempt answered (draws follow it)
        self.usage: dict[tuple[str, str, int], tuple[int | None, int | None, float | None]] = {}

    # -- attempts ------------------------------------------------------------------------

    def attempt(self, call: CallRecord, model_id: str, n: int, now: float) -> Answer:
        """The answer to attempt ``n`` of ``call`` on ``model_id`` starting at ``now``."""
        self.answers += 1
        recorded = call.attempts.get((model_id, n))
        if recorded is not None and abs(now - recorded.start) <= MATCH:
            answer = self._observed(recorded, now)
        else:
            self.inferred_attempts += 1
            answer = self._inferred(model_id, now)
        if answer.recorded is not None and not answer.silence:
            self.usage[(call.call_id, model_id, n)] = answer.recorded.usage
        return answer

    def _observed(self, obs: Observation, now: float) -> Answer:
        cached = self._exact.get(obs)
        if cached is not None:
            return cached  # answers are never changed: every replay may share one
        answer = _from_attempt(obs)
        answer.observed = True
        answer.recorded = obs
        if not obs.done:
            answer.silence = True  # cut short by its call's end: nothing more is known
        else:
            # It ends when the log saw it end, in the log's order at that instant (a replay
            # a few microseconds off the log must not reorder what the log shows in order).
            answer.end, answer.prio = obs.end, obs.prio
        if obs.kind is ErrorKind.RATE_LIMITED and not obs.retry_after_known:
            answer.retry_after, answer.hinted = self._hint(obs.model_id, now), True
        else:
            self._exact[obs] = answer
        return answer

    def _inferred(self, model_id: str, now: float) -> Answer:
        times = self._all.get(model_id)
        source = times.nearest(now) if times is not None else None
        if source is None:
            answer = Answer()
            answer.message = f"the log never saw {model_id} answer"
            return answer
        if not source.probe:
            answer = _from_attempt(source)
            answer.recorded = source
            if source.kind is ErrorKind.RATE_LIMITED and not source.retry_after_known:
                answer.retry_after, answer.hinted = self._hint(model_id, now), True
            return answer
        if not source.ok:
            return _failed_probe(source)
        success = self._successes[model_id].nearest(now)
        answer = _from_attempt(success) if success is not None else Answer()
        answer.ok, answer.silence, answer.recorded = True, False, success
        if success is None:
            answer.latency = source.latency
        return answer

    def _hint(self, model_id: str, now: float) -> float | None:
        # Counted where a backoff follows (``backoff_hinted``): only then does it matter.
        hints = self._hints.get(model_id)
        found = hints.nearest(now) if hints is not None else None
        return None if found is None else found.retry_after

    # -- probes --------------------------------------------------------------------------

    def probe(self, model_id: str, now: float, recorded: Observation | None) -> Answer:
        """The answer to a probe of ``model_id`` at ``now``: ``recorded`` replayed (at its
        instant), or the nearest recorded probe's answer."""
        self.answers += 1
        if recorded is not None:
            answer = _probe_answer(recorded)
            answer.observed = True
            answer.end, answer.prio = recorded.end, recorded.prio
            return answer
        probes = self._probes.get(model_id)
        source = probes.nearest(now) if probes is not None else None
        if source is not None and abs(source.start - now) <= MATCH:
            answer = _probe_answer(source)
            answer.observed = True
            return answer
        self.inferred_probes += 1
        if source is not None:
            return _probe_answer(source)
        times = self._all.get(model_id)
        attempt = times.nearest(now) if times is not None else None
        answer = Answer()
        if attempt is None:
            answer.message = f"the log never saw {model_id} answer"
            return answer
        answer.latency = attempt.latency
        if attempt.silence:
            answer.silence = True
        elif attempt.ok or not (attempt.kind or ErrorKind.UNKNOWN).counts_against_health:
            answer.ok = True
        else:
            answer.kind, answer.message = attempt.kind or ErrorKind.UNKNOWN, attempt.message
        return answer

    # -- the engine's random draws and retry budget --------------------------------------

    def draw(self, low: float, high: float, jitter: str) -> float:
        """The backoff draw between ``low`` and ``high`` after the latest failed attempt."""
        answer = self.last
        recorded = answer.recorded if answer is not None else None
        draw: Draw | None = recorded.draw if recorded is not None else None
        if draw is not None and answer is not None:
            same = answer.observed and (draw.low, draw.high, draw.jitter) == (low, high, jitter)
            if same and recorded is not None:
                if recorded.decision == "backoff" and draw.value is not None:
                    return draw.value
                if recorded.decision == "refused":
                    return low  # the recorded draw let the wait fit the deadline: so does this
                if recorded.decision == "final":
                    return high  # the recorded wait would have passed the deadline: this too
            if draw.fraction is not None:
                return low + draw.fraction * (high - low)
        self.inferred_draws += 1
        key = (
            "" if recorded is None else f"{recorded.call_id}|{recorded.model_id}|{recorded.attempt}"
        )
        return random.Random(f"{key}|{low}|{high}").uniform(low, high)  # noqa: S311 - not crypto

    def backoff_hinted(self) -> None:
        """The engine backs off after the latest answer: count its Retry-After if inferred."""
        if self.last is not None and self.last.hinted:
            self.inferred_retry_after += 1

    def budget(self) -> bool | None:
        """The recorded retry budget's answer after the latest (observed) failed attempt:
        True (it allowed the retry), False (it refused), None (the log does not say)."""
        answer = self.last
        if answer is None or not answer.observed or answer.recorded is None:
            return None
        decision = answer.recorded.decision
        if decision == "backoff":
            return True
        return False if decision == "refused" else None


def _from_attempt(obs: Observation) -> Answer:
    answer = Answer()
    answer.ok, answer.silence = obs.ok, obs.silence
    answer.kind = obs.kind or ErrorKind.UNKNOWN
    answer.message, answer.latency, answer.retry_after = obs.message, obs.latency, obs.retry_after
    answer.mid_stream = obs.mid_stream
    if obs.ok:
        answer.response = _response(obs)
    return answer


def _response(obs: Observation) -> object:
    """A response reporting the recorded usage (the engine records its tokens)."""
    if obs.response is None:
        tokens_in, tokens_out, _ = obs.usage
        obs.response = (
            _PLAIN
            if tokens_in is None and tokens_out is None
            else ModelResponse(
                text="",
                model=obs.model_id,
                usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out),
            )
        )
    return obs.response


def _probe_answer(obs: Observation) -> Answer:
    answer = Answer()
    answer.ok, answer.silence, answer.latency = obs.ok, obs.silence, obs.latency
    answer.kind, answer.message = obs.kind or ErrorKind.UNKNOWN, obs.message
    return answer


def _failed_probe(obs: Observation) -> Answer:
    answer = _probe_answer(obs)
    answer.ok = False
    return answer


class ReplayRandom(random.Random):
    """The engine's random source in a replay: every draw comes from the ``World``."""

    def __init__(self, world: World, jitter: str) -> None:
        super().__init__(0)
        self._world = world
        self._jitter = jitter

    def uniform(self, a: float, b: float) -> float:
        return self._world.draw(a, b, self._jitter)


class ReplayBudget(RetryBudget):
    """The retry budget of a replay: the recorded answer where the log has it (``same``: the
    budget's keys are the recorded ones), else the budget's own decision."""

    def __init__(
        self, ratio: float, min_per_s: float, clock: SimClock, world: World, *, same: bool
    ) -> None:
        super().__init__(ratio, min_per_s, clock)
        self._world = world
        self._same = same

    def try_retry(self) -> bool:
        recorded = self._world.budget() if self._same else None
        if recorded is None:
            return super().try_retry()
        if recorded:
            self.record_retry()  # the window's count stays true to what was decided
        return recorded
