"""``MultiModelFailover``: the engine with its production defaults and ``from_config``.

The core engine takes every seam explicitly; this facade fills them in: an in-memory SQLite
log (or the file named), ``anyio.sleep``, ``time.monotonic``, UTC wall-clock time and a
private ``random.Random``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from ..core.engine import FailoverEngine, WallClock
from ..core.events import Event
from ..core.policies import HealthPolicy, RetryPolicy
from ..core.projections import Snapshot, fold
from ..core.protocols import Clock, EventStore, Sleep
from ..core.scrub import register_secret
from ..storage.sqlite import SQLiteEventStore
from .config import FailoverConfig, load_config

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def utc_now() -> datetime:
    """The wall-clock time stamped on events (timezone-aware UTC)."""
    return datetime.now(UTC)


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL log (``postgresql://...``) rather than a file."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def open_store(
    event_store: EventStore | str | os.PathLike[str] | None,
    durability: str = "process",
    *,
    replica: str | None = None,
    password: str | None = None,
) -> EventStore:
    """An ``EventStore`` from a store, a ``postgresql://`` URL, a path to an SQLite file, or
    None (in-memory SQLite). ``replica`` names this writer in a shared log."""
    if event_store is None:
        return SQLiteEventStore(durability=durability, writer=replica)
    if is_postgres_url(event_store):
        # Imported on use: psycopg is an optional extra (``pip install ...[postgres]``).
        from ..storage.postgres import PostgresEventStore  # noqa: PLC0415

        return PostgresEventStore(
            str(event_store), durability=durability, writer=replica, password=password
        )
    if isinstance(event_store, str | os.PathLike):
        return SQLiteEventStore(event_store, durability=durability, writer=replica)
    for method in ("append", "wait_committed", "read", "read_others", "aclose"):
        if not callable(getattr(event_store, method, None)):
            raise TypeError(
                f"event_store must be an EventStore, a path or None; "
                f"{type(event_store).__name__} has no {method}()"
            )
    return event_store


class MultiModelFailover(FailoverEngine):
    """Ordered multi-model failover with retries, health checks and a replayable event log.

    ``clients``: a sequence or a mapping of model clients (``call(prompt)`` and
    ``health_check()``, sync or async). See the package docs for every keyword.
    """

    def __init__(
        self,
        clients: Sequence[Any] | Mapping[str, Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        health_check_interval: float = 30,
        *,
        health_policy: HealthPolicy | Mapping[str, Any] | None = None,
        event_store: EventStore | str | os.PathLike[str] | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall_clock: WallClock | None = None,
        durability: str = "process",
        fingerprint_prompts: bool = False,
        replica: str | None = None,
        follow_interval: float | None = None,
    ) -> None:
        store = open_store(event_store, durability, replica=replica)
        try:
            super().__init__(
                clients,
                retry_policy,
                health_check_interval,
                health_policy=health_policy,
                event_store=store,
                sleep=sleep if sleep is not None else anyio.sleep,
                clock=clock if clock is not None else time.monotonic,
                wall_clock=wall_clock if wall_clock is not None else utc_now,
                rng=rng if rng is not None else random.Random(),  # noqa: S311 - jitter, not crypto
                fingerprint_prompts=fingerprint_prompts,
                follow_interval=follow_interval,
            )
        except BaseException:
            if store is not event_store:
                store.close()
            raise
        self._owned_clients: list[Any] = []

    async def aclose(self) -> None:
        """Stop the health loop, flush and close the log, close clients built from config."""
        await super().aclose()
        owned, self._owned_clients = self._owned_clients, []
        for client in owned:
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()

    def prometheus_text(self) -> str:
        """Live metrics in the Prometheus text format, with ``failover_event_log_errors_total``
        and ``failover_event_log_dropped_total`` (see ``adapters.exposition``)."""
        from .exposition import live_prometheus_text  # noqa: PLC0415 - prometheus_client on use

        return live_prometheus_text(self)

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> MultiModelFailover:
        """Build from ``MULTI_MODEL_FAILOVER_CONFIG``, else ``path``, else config/risks.yaml.

        Keyword ``overrides`` (``sleep``, ``clock``, ``rng``, ``event_store``...) go to the
        constructor. Raises ``ConfigError`` for a bad document or a missing key variable.
        """
        config = load_config(path, env=env)
        return cls.from_settings(config, env=env, **overrides)

    @classmethod
    def from_settings(
        cls, config: FailoverConfig, *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> MultiModelFailover:
        """Build from an already loaded ``FailoverConfig``."""
        from .clients import build_clients  # noqa: PLC0415 - HTTP stack only when configured

        clients = build_clients(config.clients, env=env)
        options: dict[str, Any] = {
            "health_policy": config.health_policy,
            "event_store": config.event_log,
            "durability": config.durability,
            "replica": config.replica,
            "follow_interval": config.follow_interval,
        }
        password = config.event_log_password(env)
        opened: EventStore | None = None
        if password is not None and "event_store" not in overrides:
            register_secret(password)
            opened = open_store(
                config.event_log, config.durability, replica=config.replica, password=password
            )
            options["event_store"] = opened
        options.update(overrides)
        try:
            engine = cls(clients, config.retry_policy, config.health_check_interval, **options)
        except BaseException:
            if opened is not None:  # ours, not the caller's: close it with the failed engine
                opened.close()
            raise
        engine._owned_clients = list(clients.values())
        return engine


def replay(
    source: EventStore | Iterable[Event] | str | os.PathLike[str], *, lenient: bool = False
) -> Snapshot:
    """Fold a whole log into a ``Snapshot``: metrics, per-model states and the audit trail.

    ``source``: a store, an iterable of events, the path of an SQLite event log or the
    ``postgresql://`` URL of a shared one.
    """
    if is_postgres_url(source):
        from ..storage.postgres import PostgresEventStore  # noqa: PLC0415 - optional extra

        with PostgresEventStore(str(source), create=False) as shared:
            return fold(shared.read(lenient=lenient))
    if isinstance(source, str | os.PathLike):
        with SQLiteEventStore(source, create=False) as store:
            return fold(store.read(lenient=lenient))
    if isinstance(source, SQLiteEventStore):
        return fold(source.read(lenient=lenient))
    read = getattr(source, "read", None)
    if callable(read):
        return fold(read())
    return fold(source)  # type: ignore[arg-type]
