"""When a running engine took in an operator's action on a model.

An action the engine made itself (``set_maintenance``) counts at once. One written by another
process (``failover maintenance``) reaches a running engine only when it next reads the log,
and that moment is not in the log. The engine's own events bound it: leaving the model out of
a call's order (while its health is untouched) shows it in maintenance in the engine's view;
ordering, trying or probing it, or judging its health, shows it out of maintenance. The engine
reads other writers' actions in log order, so at any moment it has taken in a prefix of the
actions logged before: each sign narrows which prefixes fit.

``Actions`` gathers one model's actions and the signs during one engine's run, then places
each action: a prefix is chosen for every sign, in time order, never shrinking, the one nearest
to "every action taking the model out (and those after it) waits, every other one counts at
once"; then an action taking the model *into* maintenance counts right after the last sign
that had not taken it in (the earliest it can), and one taking it *out* first thing at the
instant of the first sign that had (the latest it can: the engine decided at that instant,
before the event that shows it), or 30 s on at most (the default probe interval, at which a
running engine reads a shared log), or at the next engine start (which reads it all).
Between such bounds the engine used the model in neither case, or the log would show it; and
a call still in flight on the model then is judged as the engine judged it.
"""

from __future__ import annotations

from typing import Final

from ..events import Maintenance
from .simclock import INF

# Seconds within which a running engine reads another writer's action, when the log shows no
# later sign of it (the default health_check_interval: the follow loop's default period).
READ_WITHIN: Final = 30.0


class MaintenanceAction:
    """A recorded operator action and the moment the engine took it in (``effective``,
    ``prio``: its place among what happens at that instant)."""

    __slots__ = ("at", "by", "effective", "model_id", "on", "prio", "reason")

    def __init__(self, event: Maintenance, at: float) -> None:
        self.model_id = event.model_id
        self.on = event.on
        self.reason = event.reason
        self.by = event.by
        self.at = at
        self.effective = at
        self.prio = float(event.seq)


class _Run:
    """Alike signs in a row: how many actions were logged before them, the prefixes that fit,
    the first and the last of them as (at, seq)."""

    __slots__ = ("first", "fits", "last", "logged")

    def __init__(self, logged: int, fits: tuple[int, ...], at: tuple[float, float]) -> None:
        self.logged = logged
        self.fits = fits
        self.first = self.last = at


class Actions:
    """One model's actions during one engine's run, and the signs of what the engine saw;
    see the module docstring. ``base``: whether the model was in maintenance before them."""

    __slots__ = ("actions", "base", "runs")

    def __init__(self, base: bool) -> None:
        self.base = base
        self.actions: list[MaintenanceAction] = []
        self.runs: list[_Run] = []  # the signs in time order

    def sign(self, at: float, seq: float, *, in_maintenance: bool) -> None:
        """At ``at`` (log order ``seq``) the engine had the model in maintenance, or not."""
        actions = self.actions
        logged = len(actions)
        while logged and (actions[logged - 1].at, actions[logged - 1].prio) >= (at, seq):
            logged -= 1
        statuses = [self.base, *(a.on for a in actions[:logged])]
        fits = tuple(i for i, on in enumerate(statuses) if on is in_maintenance)
        if not fits:
            return  # the log's own view disagrees: nothing to learn from it
        runs = self.runs
        if runs and (runs[-1].logged, runs[-1].fits) == (logged, fits):
            run = runs[-1]  # a probe's sign comes in log order at its end, dated at its start
            run.first, run.last = min(run.first, (at, seq)), max(run.last, (at, seq))
        else:
            runs.append(_Run(logged, fits, (at, seq)))

    def place(self, closing: tuple[float, float] | None) -> None:
        """Set each action's ``effective`` (``closing``: the next engine start, if any)."""
        actions = self.actions
        chosen: list[tuple[int, _Run]] = []
        taken = 0
        for run in self.runs:
            candidates = [j for j in run.fits if taken <= j <= run.logged]
            if not candidates:
                continue
            wanted = taken
            while wanted < run.logged and actions[wanted].on:
                wanted += 1  # actions into maintenance count at once; one out of it waits
            taken = min(candidates, key=lambda j: (abs(j - wanted), -j))
            chosen.append((taken, run))
        bounds = []
        for index, action in enumerate(actions, 1):
            lower = (action.at, action.prio)
            upper = closing
            for taken, run in chosen:
                if taken < index:
                    lower = max(lower, (run.last[0], run.last[1] + 0.5))
                else:
                    # Before anything at that instant: the engine decided to use the model
                    # (an order, a failover) at the wake-up that led to the sign.
                    bound = (run.first[0], -INF)
                    upper = bound if upper is None else min(upper, bound)
                    break
            bounds.append((lower, upper))
        previous: tuple[float, float] | None = None
        for index, (action, (lower, upper)) in enumerate(zip(actions, bounds, strict=True)):
            placed = lower
            if not action.on:
                # As late as the log allows, but never after the next action would count.
                latest = (action.at + READ_WITHIN, INF)
                if upper is not None:
                    latest = min(latest, upper)
                if index + 1 < len(bounds):
                    latest = min(latest, bounds[index + 1][0])
                placed = max(lower, latest)
            if previous is not None:
                placed = max(placed, previous)  # taken in in log order
            action.effective, action.prio = previous = placed
