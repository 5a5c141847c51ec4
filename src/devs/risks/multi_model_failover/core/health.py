"""Each client's health as a plain ``transitions.Machine`` with an explicit transition table.

The machine only decides: the monitor asks it where a trigger takes a client from the state the
projection holds, and records the answer as a ``state_changed`` event. State itself lives only
in the projection (the fold of the log), so an operator's or another process's event needs no
syncing. Replay never runs the machine.
"""

from __future__ import annotations

import enum

from transitions import Machine, MachineError


class HealthState(enum.StrEnum):
    """Where a client stands. Unhealthy and maintenance clients leave the rotation."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    MAINTENANCE = "maintenance"

    @property
    def in_rotation(self) -> bool:
        """Whether the client is tried in normal (not last-resort) order."""
        return self in (HealthState.HEALTHY, HealthState.DEGRADED)


_H, _D, _U, _M = (s.value for s in HealthState)

# trigger, sources, destination
TRANSITIONS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("degrade", (_H,), _D),
    ("fail", (_H, _D), _U),
    ("recover", (_D, _U), _H),
    ("enter_maintenance", (_H, _D, _U), _M),
    ("exit_maintenance", (_M,), _H),
)


class HealthRules:
    """The transition rules, as one ``transitions.Machine`` with no state of its own.

    A client's state lives in the projection (the fold of the log) and nowhere else: ``next``
    puts the machine in that state, fires the trigger and reports where it went. The engine
    records the answer as a ``state_changed`` event, which the fold then applies.
    """

    state: str

    def __init__(self) -> None:
        self._machine = Machine(
            model=self,
            states=[s.value for s in HealthState],
            transitions=[
                {"trigger": name, "source": list(sources), "dest": dest}
                for name, sources, dest in TRANSITIONS
            ],
            initial=_H,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_attribute="state",
        )

    def next(self, current: HealthState, trigger: str) -> HealthState | None:
        """Where ``trigger`` takes a client in ``current``, or None when it does not apply."""
        self._machine.set_state(current.value, model=self)
        if trigger not in self._machine.get_triggers(self.state):
            return None
        try:
            self._machine.events[trigger].trigger(self)
        except MachineError:  # pragma: no cover - guarded by get_triggers above
            return None
        return HealthState(self.state)
