"""What a what-if changes: policies, the order of clients, clients taken away, maintenance.

Keys left out keep their recorded values, key by key: ``retry_policy: {max_attempts: 1}``
changes one key of the recorded retry policy, and ``error_actions`` entries are merged over
the recorded ones. ``order`` names ids to try first, in that order; the other clients follow in
their recorded order (``without`` removes a client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from ..policies import HealthPolicy, RetryPolicy


class MaintenanceWindow(msgspec.Struct, frozen=True, kw_only=True):
    """An operator action the what-if adds: ``model_id`` out of rotation from ``start`` to
    ``end`` (None: to the end of the replay)."""

    model_id: str
    start: datetime
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.end is not None and self.end <= self.start:
            raise ValueError(
                f"maintenance of {self.model_id}: the end ({self.end.isoformat()}) must be "
                f"after the start ({self.start.isoformat()})"
            )


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """The what-if: what replaces the recorded configuration (see the module docstring).

    ``health_check_interval``: probes then follow the engine's own schedule at that interval
    (answered from the log's observations); left out, the recorded probes are replayed at
    their recorded instants.
    """

    retry_policy: dict[str, Any] = {}
    health_policy: dict[str, Any] = {}
    health_check_interval: float | None = None
    order: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()

    def __post_init__(self) -> None:
        # Each key checked (and named) now, over the defaults: a typo fails before any replay.
        merged_retry(RetryPolicy().to_dict(), self.retry_policy)
        merged_health(HealthPolicy().to_dict(), self.health_policy)
        if self.health_check_interval is not None and not (
            isinstance(self.health_check_interval, int | float)
            and not isinstance(self.health_check_interval, bool)
            and self.health_check_interval > 0
        ):
            raise ValueError(
                f"health_check_interval must be a number of seconds > 0, "
                f"got {self.health_check_interval!r}"
            )
        for name, ids in (("order", self.order), ("without", self.without)):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"{name} names {', '.join(duplicates)} more than once")

    @property
    def empty(self) -> bool:
        """Whether this changes nothing (the what-if is the calibration run)."""
        return self == Change()

    def check_models(self, known: Sequence[str]) -> None:
        """``ValueError`` naming the id unless every model named is one the log knows, and
        at least one client is left."""
        named = [*self.order, *self.without, *(m.model_id for m in self.maintenance)]
        unknown = sorted({m for m in named if m not in known})
        if unknown:
            raise ValueError(
                f"unknown model id(s) {', '.join(unknown)} (the log knows: {', '.join(known)})"
            )
        if known and set(known) <= set(self.without):
            raise ValueError("--without removes every client: at least one must stay")

    def clients(self, recorded: Sequence[str]) -> tuple[str, ...]:
        """The what-if's order of clients for an engine that recorded ``recorded``."""
        first = [m for m in self.order if m in recorded]
        rest = [m for m in recorded if m not in first]
        return tuple(m for m in (*first, *rest) if m not in self.without)

    def retry(self, recorded: Mapping[str, Any]) -> RetryPolicy:
        """The what-if's retry policy over the ``recorded`` one (its ``to_dict`` form)."""
        return merged_retry(recorded, self.retry_policy)

    def health(self, recorded: Mapping[str, Any]) -> HealthPolicy:
        """The what-if's health policy over the ``recorded`` one."""
        return merged_health(recorded, self.health_policy)


def _known(cls: type[msgspec.Struct], values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a recorded policy this version knows (a newer engine may record more)."""
    return {k: v for k, v in values.items() if k in cls.__struct_fields__}


def merged_retry(recorded: Mapping[str, Any], change: Mapping[str, Any]) -> RetryPolicy:
    """``change`` over ``recorded``, ``error_actions`` merged entry by entry; ``ValueError``
    naming the key when a value is not valid."""
    merged = {**_known(RetryPolicy, recorded), **change}
    actions = change.get("error_actions")
    if isinstance(actions, Mapping):
        merged["error_actions"] = {**recorded.get("error_actions", {}), **actions}
    return RetryPolicy.coerce(merged)


def merged_health(recorded: Mapping[str, Any], change: Mapping[str, Any]) -> HealthPolicy:
    """``change`` over ``recorded`` (the health policy)."""
    return HealthPolicy.coerce({**_known(HealthPolicy, recorded), **change})
