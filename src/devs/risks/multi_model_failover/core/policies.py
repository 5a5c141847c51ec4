"""Retry and health policies: validated, frozen msgspec structs.

Both accept a dict with the same keys (``RetryPolicy.coerce``). Unknown keys and invalid
values raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, Self

import msgspec

from .errors import ErrorKind

Jitter = Literal["full", "equal", "decorrelated", "none"]
HealthScope = Literal["fleet", "replica"]
ErrorAction = Literal["retry", "failover", "fail"]
HEALTH_SCOPES: tuple[str, ...] = ("fleet", "replica")
JITTERS: tuple[str, ...] = ("full", "equal", "decorrelated", "none")
ERROR_ACTIONS: tuple[str, ...] = ("retry", "failover", "fail")

# What a failed attempt of each kind leads to, unless ``RetryPolicy.error_actions`` says
# otherwise: ``retry`` the same client (up to ``max_attempts``, then fail over), ``failover``
# to the next client at once, or ``fail`` the whole call at once with the client's error.
DEFAULT_ERROR_ACTIONS: dict[ErrorKind, ErrorAction] = {
    ErrorKind.RATE_LIMITED: "retry",
    ErrorKind.SERVER: "retry",
    ErrorKind.UNKNOWN: "retry",
    # A silence: the same route is likely silent again, and a second wait doubles the cost.
    ErrorKind.TIMEOUT: "failover",
    ErrorKind.AUTH: "failover",
    ErrorKind.CONTEXT_LENGTH: "failover",
    # Another model's weaker filter must not answer what this one refused.
    ErrorKind.CONTENT_FILTER: "fail",
    ErrorKind.BAD_REQUEST: "fail",
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number in range."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if not _is_number(value) or (integer and not isinstance(value, int)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (strict and number <= minimum) or number < minimum:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value!r}")


class _Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    @classmethod
    def coerce(cls, value: Self | Mapping[str, Any] | None) -> Self:
        """Accept an instance, a dict with the same keys, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{cls.__name__} must be a {cls.__name__}, a dict or None, "
                f"got {type(value).__name__}"
            )
        known = set(cls.__struct_fields__)
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**{str(k): v for k, v in value.items()})

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain builtins (as recorded in ``engine_started``)."""
        return msgspec.structs.asdict(self)


class RetryPolicy(_Policy, frozen=True):
    """How a call retries one client, backs off and gives up.

    Delays and budgets are in seconds. With ``jitter="none"`` the n-th backoff on one client is
    exactly ``min(max_delay, base_delay * multiplier ** (n-1))``.

    ``attempt_timeout`` bounds one attempt of a call (30 s: an LLM answer that takes longer
    is rare, and a silence must not eat the whole ``call_budget``); a stream's attempt is
    bounded by ``first_token_timeout`` until its first chunk and by ``idle_timeout`` between
    chunks after it. ``None`` turns any of the three off. ``error_actions`` maps an error kind
    to ``retry``, ``failover`` or ``fail``, over ``DEFAULT_ERROR_ACTIONS``.
    """

    max_attempts: int = 2
    base_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 8.0
    jitter: Jitter = "full"
    call_budget: float = 60.0
    max_total_attempts: int | None = None
    attempt_timeout: float | None = 30.0
    first_token_timeout: float | None = 30.0
    idle_timeout: float | None = 30.0
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_s: float = 10.0
    # Plain text values: each entry is checked (and named) in ``__post_init__``.
    error_actions: dict[str, str] = {}

    def __post_init__(self) -> None:
        _check_number("max_attempts", self.max_attempts, minimum=1, integer=True)
        _check_number("base_delay", self.base_delay)
        _check_number("multiplier", self.multiplier, minimum=1)
        _check_number("max_delay", self.max_delay)
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(JITTERS)}, got {self.jitter!r}")
        _check_number("call_budget", self.call_budget, strict=True)
        _check_number(
            "max_total_attempts", self.max_total_attempts, minimum=1, integer=True, optional=True
        )
        for name in ("attempt_timeout", "first_token_timeout", "idle_timeout"):
            _check_number(name, getattr(self, name), strict=True, optional=True)
        _check_number("retry_budget_ratio", self.retry_budget_ratio)
        _check_number("retry_budget_min_per_s", self.retry_budget_min_per_s)
        _check_error_actions(self.error_actions)

    def action(self, kind: ErrorKind) -> ErrorAction:
        """What a failed attempt of ``kind`` leads to (see ``DEFAULT_ERROR_ACTIONS``)."""
        chosen = self.error_actions.get(kind)
        if chosen is not None:
            return chosen  # type: ignore[return-value]  # checked in __post_init__
        return DEFAULT_ERROR_ACTIONS.get(kind, "fail")


def _check_error_actions(actions: object) -> None:
    """``ValueError`` naming the entry unless ``actions`` maps error kinds to actions."""
    if not isinstance(actions, Mapping):
        raise ValueError(  # noqa: TRY004 - the policy's contract: bad values are ValueError
            f"error_actions must be a mapping of error kind to action, got {actions!r}"
        )
    for kind, action in actions.items():
        if kind not in DEFAULT_ERROR_ACTIONS:
            known = ", ".join(DEFAULT_ERROR_ACTIONS)
            raise ValueError(f"error_actions: unknown error kind {kind!r} (known: {known})")
        if action not in ERROR_ACTIONS:
            raise ValueError(
                f"error_actions.{kind} must be one of {', '.join(ERROR_ACTIONS)}, got {action!r}"
            )


class HealthPolicy(_Policy, frozen=True):
    """When a failure streak degrades or removes a client, and how long a probe may take.

    A streak counts calls that gave up on the client; a success ends it.

    ``scope`` matters when several engines (replicas) share one log:

    - ``"fleet"`` (default): health is shared. A probe failure or a failure streak seen by one
      replica takes the model out of rotation on every replica (a provider outage is the same
      outage everywhere), and any replica's successful probe brings it back. Every replica's
      live snapshot equals the replay of the shared log.
    - ``"replica"``: each replica judges health from its own probes and calls only (for a
      local network problem that other hosts do not have). Maintenance is still fleet-wide,
      and ``metrics()``/``snapshot()`` still show the whole fleet; ``states`` and the rotation
      are this replica's own.

    Recovery: an unhealthy client is probed ``recovery_probe_delay`` seconds after it turned
    unhealthy, then after twice as long each time a probe fails, up to the probe interval. And
    ``trial_after`` seconds after its last failure, a real call may try it again in its place
    (a half-open circuit breaker's trial): at most ``trial_calls`` calls at once, one attempt
    each. A trial that succeeds returns the client to healthy; one that fails starts the
    cool-down again, and its call fails over at once. ``trial_calls: 0`` turns trials off.
    """

    degraded_after: int = 1
    unhealthy_after: int = 3
    probe_timeout: float = 5.0
    scope: HealthScope = "fleet"
    recovery_probe_delay: float = 1.0
    trial_after: float = 1.0
    trial_calls: int = 1

    def __post_init__(self) -> None:
        _check_number("degraded_after", self.degraded_after, minimum=1, integer=True)
        _check_number("unhealthy_after", self.unhealthy_after, minimum=1, integer=True)
        _check_number("probe_timeout", self.probe_timeout, strict=True)
        _check_number("recovery_probe_delay", self.recovery_probe_delay, strict=True)
        _check_number("trial_after", self.trial_after)
        _check_number("trial_calls", self.trial_calls, integer=True)
        if self.scope not in HEALTH_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(HEALTH_SCOPES)}, got {self.scope!r}")
        if self.unhealthy_after < self.degraded_after:
            raise ValueError(
                f"unhealthy_after ({self.unhealthy_after}) must be >= degraded_after "
                f"({self.degraded_after})"
            )
