"""The health monitor: judges clients from calls and probes, runs the probe and follow loops.

Every judgement goes through ``HealthRules`` (the ``transitions`` table) from the state the
live fold holds, and becomes a ``state_changed`` event; the fold applies it. Nothing else keeps
a client's state.

All waiting and time reading go through the injected ``sleep`` and ``clock``.
"""

from __future__ import annotations

import anyio
from loguru import logger

from .calls import EngineClosedError
from .cancellation import is_foreign_cancel
from .errors import ErrorKind, ModelError
from .events import HealthProbe, StateChanged
from .health import HealthRules, HealthState
from .livelog import LiveLog, WallClock
from .policies import HealthPolicy
from .protocols import Clock, Sleep, Timer
from .registry import ClientRegistry, RegisteredClient
from .scrub import describe_exception

_NEEDS_RECOVERY = (HealthState.DEGRADED, HealthState.UNHEALTHY)


class HealthMonitor:
    """Judges health from calls and probes; see the module docstring."""

    def __init__(
        self,
        registry: ClientRegistry,
        log: LiveLog,
        policy: HealthPolicy,
        *,
        clock: Clock,
        sleep: Sleep,
        timer: Timer,
        now: WallClock,
        interval: float,
        follow_interval: float | None,
    ) -> None:
        self._registry = registry
        self._log = log
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._timer = timer
        self._now = now
        self.interval = interval
        self.follow_interval = follow_interval
        self._rules = HealthRules()
        self._follow_failing = False
        self._rounds: set[anyio.CancelScope] = set()  # probe rounds under way
        self.closed = False
        # Recovery (see ``HealthPolicy``): per client, the clock reading of its last failure
        # while unhealthy, its failed probes in a row, its trial calls in flight, and the
        # sleep of its probe loop (cancelled to probe it sooner).
        self._last_failure: dict[str, float] = {}
        self._failed_probes: dict[str, int] = dict.fromkeys(registry.ids, 0)
        self._trials: dict[str, int] = dict.fromkeys(registry.ids, 0)
        self._unhealthy: set[str] = set()
        self._waiting: dict[str, anyio.CancelScope] = {}

    def state(self, model_id: str) -> HealthState:
        """The state that decides ``model_id``'s place in the rotation."""
        return self._log.health.state_of(model_id).state

    def change(self, model_id: str, trigger: str, reason: str) -> None:
        """Fire ``trigger`` on ``model_id``'s current state; record the move, if any."""
        before = self.state(model_id)
        after = self._rules.next(before, trigger)
        if after is None:
            return
        self._log.emit(
            StateChanged(
                at=self._now(), model_id=model_id, from_state=before, to_state=after, reason=reason
            )
        )
        logger.info(
            "model {} is now {} ({})",
            model_id,
            after.value,
            reason,
            model_id=model_id,
            from_state=before.value,
            to_state=after.value,
        )

    # -- judging from calls --------------------------------------------------------------

    def succeeded(self, model_id: str, *, trial: bool = False) -> None:
        """A call succeeded on ``model_id``: a degraded or unhealthy client recovers."""
        if self.state(model_id) in _NEEDS_RECOVERY:
            self.change(
                model_id, "recover", "trial call succeeded" if trial else "a call succeeded"
            )

    # -- recovery: trials and the probe schedule ------------------------------------------

    def rotation_changed(self) -> None:
        """A state may have changed (ours, an operator's, another replica's): a client that
        just turned unhealthy starts its cool-down and is probed soon; one that left
        unhealthy starts afresh."""
        for model_id in self._registry.ids:
            unhealthy = self.state(model_id) is HealthState.UNHEALTHY
            if unhealthy == (model_id in self._unhealthy):
                continue
            if unhealthy:
                self._unhealthy.add(model_id)
                self._last_failure[model_id] = self._clock()
                waiting = self._waiting.get(model_id)
                if waiting is not None:
                    waiting.cancel()  # its next probe is due sooner than it was
            else:
                self._unhealthy.discard(model_id)
                self._failed_probes[model_id] = 0

    def admit_trial(self, model_id: str) -> bool:
        """Whether a call may try unhealthy ``model_id`` now as its trial; if so, the trial
        is counted until ``end_trials``."""
        policy = self._policy
        if self._trials[model_id] >= policy.trial_calls:
            return False
        last = self._last_failure.get(model_id)
        if last is not None and self._clock() - last < policy.trial_after:
            return False
        self._trials[model_id] += 1
        return True

    def end_trials(self, model_ids: tuple[str, ...]) -> None:
        """The call that held these trials has moved on."""
        for model_id in model_ids:
            self._trials[model_id] -= 1

    def trial_failed(self, model_id: str, message: str) -> None:
        """A trial call failed on ``model_id``: its cool-down starts again."""
        self._last_failure[model_id] = self._clock()
        logger.info("trial call on {} failed: {}", model_id, message, model_id=model_id)

    def next_probe_in(self, model_id: str) -> float:
        """Seconds until ``model_id``'s next probe: the interval, or while it is unhealthy
        ``recovery_probe_delay`` doubled for each failed probe, up to the interval."""
        if self.state(model_id) is not HealthState.UNHEALTHY:
            return self.interval
        fails = min(self._failed_probes[model_id], 32)
        return min(self.interval, self._policy.recovery_probe_delay * 2.0**fails)

    def gave_up_on(self, model_id: str, kind: ErrorKind, message: str) -> None:
        """A call gave up on ``model_id`` after an error of ``kind``."""
        if kind is ErrorKind.AUTH:
            self.change(model_id, "fail", f"auth error: {message}")
            return
        if not kind.counts_against_health:
            return
        if model_id in self._unhealthy:
            # A call that was already under way failed on it too: its cool-down starts again.
            self._last_failure[model_id] = self._clock()
        streak = self._log.health.state_of(model_id).streak
        policy = self._policy
        if streak >= policy.unhealthy_after:
            self.change(model_id, "fail", f"{streak} failed call(s) in a row")
        elif streak >= policy.degraded_after:
            self.change(model_id, "degrade", f"{streak} failed call(s) in a row")

    # -- probes --------------------------------------------------------------------------

    async def check_health(self) -> dict[str, HealthState]:
        """Probe every client not in maintenance now; returns the states afterwards.

        Raises ``EngineClosedError`` once the engine is closing (a round under way then is
        cut short: its probes record nothing).
        """
        self._refuse_if_closed()
        await self.try_follow()
        with anyio.CancelScope() as round_scope:
            self._rounds.add(round_scope)
            try:
                async with anyio.create_task_group() as group:
                    for model_id in self._registry.ids:
                        if self.state(model_id) is not HealthState.MAINTENANCE:
                            group.start_soon(self._probe, self._registry[model_id])
            finally:
                self._rounds.discard(round_scope)
        self._refuse_if_closed()
        return {mid: self.state(mid) for mid in self._registry.ids}

    def close(self) -> None:
        """No more probes: rounds under way are cut short, new ones refused."""
        self.closed = True
        for round_scope in list(self._rounds):
            round_scope.cancel()

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise EngineClosedError("this MultiModelFailover is closed: no more probes")

    async def probe(self, model_id: str) -> None:
        """Probe ``model_id`` once, now, as its loop would: the probe is recorded and judges
        the model's health. ``ValueError`` naming the known ids for a model it does not have;
        ``EngineClosedError`` once closed."""
        self._refuse_if_closed()
        self._registry.check_known(model_id)
        await self._probe(self._registry[model_id])

    async def _probe(self, client: RegisteredClient) -> None:
        model_id = client.model_id
        started = self._clock()
        kind: ErrorKind | None
        if client.probe_stuck:
            # A sync probe stuck in its thread: never start a second one beside it.
            ok, kind, message = False, ErrorKind.TIMEOUT, "the previous probe has not returned"
        else:
            ok, kind, message = await self._run_probe(client)
        if self.closed:
            return
        self._log.emit(
            HealthProbe(
                at=self._now(),
                model_id=model_id,
                ok=ok,
                latency=self._clock() - started,
                error_kind=kind,
                message=message,
            )
        )
        if not ok:
            was_unhealthy = self.state(model_id) is HealthState.UNHEALTHY
            self.change(model_id, "fail", f"probe failed: {message}")
            if was_unhealthy:  # the next probe waits twice as long; after the first, 1 s
                self._failed_probes[model_id] += 1
            self._last_failure[model_id] = self._clock()
            return
        self._failed_probes[model_id] = 0
        if self.state(model_id) in _NEEDS_RECOVERY:
            self.change(model_id, "recover", "probe succeeded")

    async def _run_probe(self, client: RegisteredClient) -> tuple[bool, ErrorKind | None, str]:
        """Probe ``client`` within ``probe_timeout``: (healthy, error kind, why not)."""
        limit = self._policy.probe_timeout
        try:
            with self._timer.move_on_after(limit) as scope:
                answer = await client.health_check()
        except ModelError as exc:
            return False, exc.kind, exc.message
        except Exception as exc:  # noqa: BLE001 - any probe failure marks the client unhealthy
            return False, ErrorKind.UNKNOWN, describe_exception(exc)
        except BaseException as exc:
            if not is_foreign_cancel(exc):
                raise
            return False, ErrorKind.UNKNOWN, f"health_check() raised {type(exc).__name__}"
        if scope.cancelled_caught:
            return False, ErrorKind.TIMEOUT, f"probe timed out after {limit:g}s"
        if answer is not True:
            return False, ErrorKind.UNKNOWN, f"health_check() returned {answer!r}, not True"
        return True, None, ""

    # -- following a shared log ----------------------------------------------------------

    async def try_follow(self) -> None:
        """Follow the shared log; a log that cannot be read leaves health local for a while.

        Probes and calls go on from this engine's own view; the outage is logged once, and
        its end once, however often the loops try.
        """
        try:
            await self._log.follow()
        except Exception as exc:  # noqa: BLE001 - the log being away must not stop health
            if not self._follow_failing:
                logger.error(
                    "cannot read the shared event log ({}); health is local until it is back",
                    describe_exception(exc),
                )
            self._follow_failing = True
        else:
            if self._follow_failing:
                logger.warning("the shared event log is readable again")
            self._follow_failing = False

    # -- the loops -----------------------------------------------------------------------

    async def run(self) -> None:
        """One probe loop per client and the follow loop beside them; until cancelled."""
        async with anyio.create_task_group() as loops:
            loops.start_soon(self._follow_loop, self.follow_interval or self.interval)
            for model_id in self._registry.ids:
                loops.start_soon(self._probe_loop, self._registry[model_id])

    async def _follow_loop(self, interval: float) -> None:
        while True:
            await self.try_follow()
            await self._sleep(interval)

    async def _probe_loop(self, client: RegisteredClient) -> None:
        """Probe ``client`` now, then on its schedule (``next_probe_in``). The schedule is
        kept: a slow probe shortens the next wait instead of shifting it."""
        model_id = client.model_id
        due = self._clock()
        while True:
            wait = due - self._clock()
            if wait > 0:
                with anyio.CancelScope() as waiting:
                    self._waiting[model_id] = waiting
                    await self._sleep(wait)
                self._waiting.pop(model_id, None)
                if waiting.cancel_called:  # it turned unhealthy: work out when again
                    due = self._clock() + self.next_probe_in(model_id)
                    continue
            started = self._clock()
            if self.state(model_id) is not HealthState.MAINTENANCE:
                await self._probe_now(client)
            due = max(started + self.next_probe_in(model_id), self._clock())

    async def _probe_now(self, client: RegisteredClient) -> None:
        """One probe of the loop, cut short if the engine closes; a failure is logged."""
        with anyio.CancelScope() as scope:
            self._rounds.add(scope)
            try:
                await self._probe(client)
            except Exception as exc:  # noqa: BLE001 - a broken probe must not end the loop
                logger.opt(exception=False).error(
                    "health check of {} failed: {}", client.model_id, describe_exception(exc)
                )
            finally:
                self._rounds.discard(scope)
