"""One replay: the recorded calls run again through the real engine, on virtual time.

Each recorded engine start builds a ``FailoverEngine`` (the recorded configuration, or the
what-if's over it) whose clients answer from the ``World``, whose clock, sleep and timeouts are
a ``SimClock``, whose random draws and retry budget follow the log, and whose event log is an
in-memory list. Then every happening is taken in time order:

- each recorded call starts at its recorded instant, with the caller's own timeout when the
  log shows one, and is cancelled when (and only if) its recorded caller cancelled it, at that
  instant: the caller's patience is the same in every replay;
- each recorded probe runs again at its instant (unless the what-if names a
  ``health_check_interval``: the engine's own probe schedule then runs);
- each recorded operator action is taken in when the recorded engine took it in, and the
  what-if's own actions at their instants.

What the engine decides (order, retries, backoffs, failovers, health) is the engine's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any, Final, cast

import anyio
import anyio.lowlevel
import msgspec

from ..calls import EngineClosedError
from ..engine import FailoverEngine
from ..errors import ModelError
from ..events import Event, Maintenance
from ..health import HealthState
from ..projections import Snapshot, apply
from ..protocols import Timer
from .change import Change
from .operators import MaintenanceAction
from .recording import CallRecord, EngineRun, Observation, Recording
from .simclock import FOREVER, INF, Fiber, Scope, SimClock, current_fiber
from .world import MATCH, Answer, ReplayBudget, ReplayRandom, World

# The interval of an engine whose probes the replay takes from the log (not used for them).
_RECORDED_INTERVAL = 30.0


# The text of a replayed stream's chunk: what the caller read is not in the log.
_CHUNK: Final = "."


class CallRun:
    """A replayed call on its fiber: the record, its attempts per model, its cancel scope."""

    __slots__ = ("counts", "record", "scope")

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.counts: dict[str, int] = {}
        self.scope: Scope | None = None


class ProbeRun:
    """A replayed probe on its fiber: the recorded probe it replays (None: a new one)."""

    __slots__ = ("recorded",)

    def __init__(self, recorded: Observation | None) -> None:
        self.recorded = recorded


class Sink:
    """The replay's event log: a list, and the fold of it a (re)starting engine loads."""

    durability = "buffered"
    writer = "whatif"

    def __init__(self, initial: Snapshot, sim: SimClock) -> None:
        self.events: list[Event] = []
        self.closed = False  # the replay is over (an engine left open then has nothing open)
        self._base = _copy(initial)
        self._folded = 0
        self._sim = sim
        self.snapshots = self  # the loader LiveLog looks for: the fold without reading

    def append(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)

    async def wait_committed(self, ticket: int) -> None:
        # A caller recorded as cancelled while its outcome was committed is cancelled here
        # again, if the replayed call ends by then (the engine records it the same way).
        try:
            fiber = current_fiber()
        except LookupError:
            return
        run = fiber.data
        if not isinstance(run, CallRun) or run.scope is None:
            return
        cut = run.record.commit_cancel_at
        if cut is not None and self._sim.now >= cut:
            run.scope.cancel_now()
            await anyio.lowlevel.checkpoint()

    def read(self, *, after: int = 0) -> Iterator[Event]:
        return iter(self.events[after:])

    def read_others(self, after: int) -> tuple[list[Event], int]:
        return [], after

    def last_seq(self) -> int:
        return len(self.events)

    def load(
        self,
        upto: int | None = None,
        *,
        from_start: bool = False,
        lenient: bool = False,
        keep: bool = False,
    ) -> tuple[Snapshot, int]:
        """The fold of the replay's log so far (what a starting engine loads)."""
        for event in self.events[self._folded :]:
            apply(self._base, event)
        self._folded = len(self.events)
        return _copy(self._base), self._folded

    def close(self) -> None:
        """Nothing to close: every engine of the replay shares this list."""

    async def aclose(self) -> None:
        """Nothing to close."""


def _copy(snap: Snapshot) -> Snapshot:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot)


class WorldClient:
    """A model client of the replay: it answers as the ``World`` says, on virtual time."""

    def __init__(
        self, model_id: str, world: World, sim: SimClock, *, idle: float | None = None
    ) -> None:
        self.model_id = model_id
        self._world = world
        self._sim = sim
        # A stream's chunks come at least this often (its engine's ``idle_timeout`` halved).
        self._pace = idle / 2 if idle else None

    async def call(self, prompt: Any) -> Any:
        """Answer the attempt of the call running on this fiber."""
        answer = self._answer()
        await self._until_done(answer)
        if answer.ok:
            return answer.response
        raise ModelError(answer.message, kind=answer.kind, retry_after=answer.retry_after)

    async def stream(self, prompt: Any) -> AsyncIterator[str]:
        """Answer the attempt of the stream running on this fiber. One that answered, or
        broke after its first chunk, sends its first chunk at once (the log does not say
        when it came; the call's deadline bounds only that one) and more, no further apart
        than its engine's ``idle_timeout`` allows, until it ends as recorded (a stall stays
        a stall). One that failed before its first chunk sends none."""
        answer = self._answer()
        now = self._sim.now
        end = answer.end if answer.end is not None and answer.end >= now else now + answer.latency
        if answer.ok or answer.mid_stream:
            yield _CHUNK
            if not answer.silence and self._pace is not None:
                while end - self._sim.now > self._pace:
                    await self._sim.sleep(self._pace)
                    yield _CHUNK
        await self._until_done(answer, end)
        if not answer.ok:
            raise ModelError(answer.message, kind=answer.kind, retry_after=answer.retry_after)

    def _answer(self) -> Answer:
        run = cast(CallRun, current_fiber().data)
        n = run.counts[self.model_id] = run.counts.get(self.model_id, 0) + 1
        return self._world.attempt(run.record, self.model_id, n, self._sim.now)

    async def _until_done(self, answer: Answer, end: float | None = None) -> None:
        """Wait until ``answer`` ends: as recorded, else after its latency (from ``end``, an
        instant, when the caller already began waiting)."""
        sim = self._sim
        try:
            if answer.silence:
                if answer.end is not None:
                    _ends_as_recorded(current_fiber(), answer.end, answer.prio)
                await sim.sleep_until(FOREVER)
            elif answer.end is not None and answer.end >= sim.now:
                await sim.sleep_until(answer.end, answer.prio)
            elif end is not None:
                await sim.sleep_until(max(end, sim.now))
            else:
                await sim.sleep(answer.latency)
        finally:
            self._world.last = answer  # the engine's next draw and budget question follow it

    async def health_check(self) -> bool:
        """Answer the probe running on this fiber."""
        run = cast(ProbeRun, current_fiber().data)
        sim = self._sim
        answer = self._world.probe(self.model_id, sim.now, run.recorded)
        if answer.silence:
            await sim.sleep_until(FOREVER)
        elif answer.end is not None and answer.end >= sim.now:
            await sim.sleep_until(answer.end, answer.prio)
        else:
            await sim.sleep(answer.latency)
        if answer.ok:
            return True
        raise ModelError(answer.message, kind=answer.kind)


class Replay:
    """One replay of ``rec`` under ``change`` (``calibrate``: the recorded configuration)."""

    def __init__(self, rec: Recording, world: World, change: Change, *, calibrate: bool) -> None:
        self.rec = rec
        self.world = world
        self.change = Change() if calibrate else change
        self.calibrate = calibrate
        self.sim = SimClock(rec.origin)
        self.sink = Sink(rec.initial, self.sim)
        self.engine: FailoverEngine | None = None
        self.engines: list[FailoverEngine] = []
        self._loops: dict[tuple[int, str], Fiber] = {}
        self._own_probes = self.change.health_check_interval is not None
        self._calls = {call.call_id: call for call in rec.calls}
        # Maintenance: a model is in it while the log's operators have it there or any of
        # the what-if's windows is open on it (``_recorded``, ``_window``).
        self._recorded_on = {
            model_id: state.state is HealthState.MAINTENANCE
            for model_id, state in rec.initial.states.items()
        }
        self._windows_open: dict[str, int] = {}

    async def run(self) -> list[Event]:
        """Run the replay; the events it recorded, oldest first."""
        self.world.reset()
        self._schedule()
        try:
            await self.sim.run()
        except BaseException:
            self.sink.closed = True  # the engines go with the world: nothing left to close
            raise
        with anyio.CancelScope(shield=True):
            for engine in self.engines:  # nothing in flight: the world ran to its end
                await engine.aclose()
        self.sink.closed = True
        return self.sink.events

    # -- what happens when ---------------------------------------------------------------

    def _schedule(self) -> None:
        rec, sim, end = self.rec, self.sim, self.rec.end
        for run in rec.engines:
            if run.start <= end:
                sim.at(run.start, run.prio, partial(self._start_engine, run))
            if run.stop is not None and run.stop <= end:
                sim.at(run.stop, run.stop_prio, partial(self._stop_engine, run))
        for call in rec.calls:
            sim.at(call.start, call.prio, partial(self._start_call, call))
        if not self._own_probes:
            for probe in rec.probes:
                if probe.start <= end:
                    sim.at(probe.start, probe.prio, partial(self._probe, probe))
        for action in rec.maintenance:
            if action.effective <= end:
                sim.at(action.effective, action.prio, partial(self._recorded, action))
        for window in self.change.maintenance:
            # First at its instant: "from WHEN" includes a call that starts at WHEN.
            sim.at(rec.seconds(window.start), -INF, partial(self._window, window.model_id, True))
            if window.end is not None:
                sim.at(rec.seconds(window.end), -INF, partial(self._window, window.model_id, False))

    def _recorded(self, action: MaintenanceAction) -> None:
        """A recorded operator action; while a what-if window holds the model, it stays in."""
        self._recorded_on[action.model_id] = action.on
        if not self._windows_open.get(action.model_id):
            self._operator(action.model_id, action.on, action.reason, action.by)

    def _window(self, model_id: str, opens: bool) -> None:
        """A what-if window opens or closes: the model goes in with the first one open, out
        with the last one closed, unless the log's operators have it in maintenance then."""
        open_now = self._windows_open.get(model_id, 0) + (1 if opens else -1)
        self._windows_open[model_id] = open_now
        if open_now == (1 if opens else 0) and not self._recorded_on.get(model_id, False):
            self._operator(model_id, opens, "what-if", "whatif")

    def _start_engine(self, run: EngineRun) -> None:
        previous = self.engine
        self.engine = engine = self._build(run)
        self.engines.append(engine)
        if previous is not None and not previous.runner.ledger.in_flight:
            self.sim.spawn(previous.aclose)
        if self._own_probes:
            self._watch_unhealthy(engine)
            for model_id in engine.model_ids:
                self.sim.spawn(self._probe_loop, engine, model_id)

    def _stop_engine(self, run: EngineRun) -> None:
        engine = self.engine
        if engine is not None and not engine.closed and not engine.runner.ledger.in_flight:
            self.sim.spawn(engine.aclose)

    def _start_call(self, call: CallRecord) -> None:
        if self.engine is not None:
            self.sim.spawn(self._call, self.engine, call, data=CallRun(call))

    def _probe(self, probe: Observation) -> None:
        engine = self.engine
        if engine is not None and probe.model_id in engine.registry.by_id:
            self.sim.spawn(self._run_probe, engine, probe.model_id, data=ProbeRun(probe))

    def _operator(self, model_id: str, on: bool, reason: str, by: str) -> None:
        engine = self.engine
        if engine is None or engine.closed or model_id not in engine.registry.by_id:
            # No engine runs, or it has no such model: the action goes into the log, as the
            # command line writes it, for the next engine to load.
            if model_id not in self.change.without:
                event = Maintenance(
                    at=self.sim.utc(), model_id=model_id, on=on, reason=reason, by=by
                )
                self.sink.append(event)
        else:
            self.sim.spawn(partial(engine.set_maintenance, model_id, on, reason=reason, by=by))

    # -- the engines ---------------------------------------------------------------------

    def _build(self, run: EngineRun) -> FailoverEngine:
        change = self.change
        models = change.clients(run.models)
        if not models:
            raise ValueError(
                f"the what-if leaves no client to the engine started at "
                f"{self.rec.instant(run.start).isoformat()} (it had {', '.join(run.models)})"
            )
        retry = change.retry(run.retry_raw) if change.retry_policy else run.retry
        health = change.health(run.health_raw) if change.health_policy else run.health
        sim, world = self.sim, self.world
        same = (retry.retry_budget_ratio, retry.retry_budget_min_per_s) == (
            run.retry.retry_budget_ratio,
            run.retry.retry_budget_min_per_s,
        )
        engine = FailoverEngine(
            {m: WorldClient(m, world, sim, idle=retry.idle_timeout) for m in models},
            retry,
            change.health_check_interval or _RECORDED_INTERVAL,
            health_policy=health,
            event_store=self.sink,  # type: ignore[arg-type]  # an EventStore, structurally
            sleep=self._backoff,
            clock=sim,
            # Its scopes are not anyio's, but offer what the engine uses of them.
            timer=cast(Timer, sim),
            wall_clock=sim.utc,
            rng=ReplayRandom(world, retry.jitter),
            call_ids=_call_id,
            # The budget's recorded answers (see ``World.budget``).
            retry_budget=ReplayBudget(
                retry.retry_budget_ratio, retry.retry_budget_min_per_s, sim, world, same=same
            ),
        )
        engine.log.load()  # a restart reads the replay's log so far, at once
        return engine

    async def _backoff(self, seconds: float) -> None:
        """The engine's waits: a backoff ends in the log's order at its instant (it follows
        the failed attempt just answered: nothing runs between the two)."""
        sim = self.sim
        when, prio = sim.now + seconds, INF
        self.world.backoff_hinted()
        answer = self.world.last
        recorded = answer.recorded if answer is not None and answer.observed else None
        if recorded is not None:
            call = self._calls.get(recorded.call_id)
            after = (
                call.attempts.get((recorded.model_id, recorded.attempt + 1))
                if call is not None
                else None
            )
            if after is not None and abs(after.start - when) <= MATCH:
                when, prio = after.start, after.start_prio  # the log's instant and order
        await sim.sleep_until(when, prio)

    async def _call(self, engine: FailoverEngine, record: CallRecord) -> None:
        if record.cancel_at is None:
            with contextlib.suppress(ModelError, EngineClosedError):  # the log holds how
                await _run_call(engine, record)
            return
        run = cast(CallRun, current_fiber().data)
        with self.sim.scope(record.cancel_at, record.cancel_prio) as scope:
            run.scope = scope
            with contextlib.suppress(ModelError, EngineClosedError):
                await _run_call(engine, record)

    async def _run_probe(self, engine: FailoverEngine, model_id: str) -> None:
        if engine.closed or engine.monitor.state(model_id) is HealthState.MAINTENANCE:
            return
        with contextlib.suppress(EngineClosedError):  # closing: no probe, as in the monitor
            await engine.monitor.probe(model_id)

    async def _probe_loop(self, engine: FailoverEngine, model_id: str) -> None:
        """The monitor's probe schedule for one model (``HealthMonitor._probe_loop``)."""
        fiber = current_fiber()
        monitor, sim = engine.monitor, self.sim
        key = (id(engine), model_id)
        due = sim.now
        while self.engine is engine and not engine.closed and due <= self.rec.end:
            if due > sim.now:
                self._loops[key] = fiber
                try:
                    await sim.sleep_until(due)
                finally:
                    self._loops.pop(key, None)
                if self.engine is not engine or engine.closed:
                    return
            started = sim.now
            if monitor.state(model_id) is not HealthState.MAINTENANCE:
                fiber.data = ProbeRun(None)
                with contextlib.suppress(EngineClosedError):
                    await monitor.probe(model_id)
            due = max(started + monitor.next_probe_in(model_id), sim.now)

    def _watch_unhealthy(self, engine: FailoverEngine) -> None:
        """As the monitor does: a model that turns unhealthy is probed sooner."""
        original = engine.log.on_rotation_change
        unhealthy: set[str] = set()

        def changed() -> None:
            original()
            for model_id in engine.model_ids:
                if engine.monitor.state(model_id) is not HealthState.UNHEALTHY:
                    unhealthy.discard(model_id)
                    continue
                if model_id in unhealthy:
                    continue
                unhealthy.add(model_id)
                fiber = self._loops.get((id(engine), model_id))
                if fiber is not None:
                    self.sim.retime(fiber, self.sim.now + engine.monitor.next_probe_in(model_id))

        engine.log.on_rotation_change = changed


async def _run_call(engine: FailoverEngine, record: CallRecord) -> None:
    """The recorded call again: a stream (with its recovery) where the log shows a stream,
    else a call."""
    if record.recovery is None:
        await engine.call_with_outcome(record.call_id, timeout=record.timeout)
        return
    async with engine.open_stream(record.call_id, record.timeout, record.recovery) as stream:
        async for _ in stream:
            pass


def _ends_as_recorded(fiber: Fiber, end: float, prio: float) -> None:
    """The engine's timer that ends a recorded silence (the attempt's timeout, the call's
    deadline) fires in the log's order among what happens at that instant."""
    for scope in fiber.scopes:
        if abs(scope.deadline - end) <= MATCH:
            scope.deadline, scope.prio = end, min(scope.prio, prio)


def _call_id() -> str:
    run = cast(CallRun, current_fiber().data)
    return run.record.call_id
