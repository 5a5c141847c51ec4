"""Each client's health as a plain ``transitions.Machine`` with an explicit transition table.

The machine only decides: the engine fires a trigger, reads where the machine went and records
that as a ``state_changed`` event. State itself lives in the projection (the fold of the log);
after the log changes a state by other means (an operator, another process) the machine is
moved there with ``sync``. Replay never runs the machine.
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


class HealthMachine:
    """The health state machine of one client."""

    state: str

    def __init__(self, initial: HealthState = HealthState.HEALTHY) -> None:
        self._machine = Machine(
            model=self,
            states=[s.value for s in HealthState],
            transitions=[
                {"trigger": name, "source": list(sources), "dest": dest}
                for name, sources, dest in TRANSITIONS
            ],
            initial=initial.value,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_attribute="state",
        )

    @property
    def current(self) -> HealthState:
        """The machine's state."""
        return HealthState(self.state)

    def can(self, trigger: str) -> bool:
        """Whether ``trigger`` is valid from the current state."""
        return trigger in self._machine.get_triggers(self.state)

    def fire(self, trigger: str) -> HealthState | None:
        """Fire ``trigger`` if valid; return the new state, or None when it does not apply."""
        if not self.can(trigger):
            return None
        try:
            self._machine.events[trigger].trigger(self)
        except MachineError:  # pragma: no cover - guarded by ``can`` above
            return None
        return self.current

    def sync(self, state: HealthState) -> None:
        """Move to ``state`` without a transition (the log already recorded how)."""
        if self.state != state.value:
            self._machine.set_state(state.value, model=self)
