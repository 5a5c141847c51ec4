"""``MultiModelFailover``: the engine with its production defaults and ``from_config``.

The core engine takes every seam explicitly; this facade fills them in: an in-memory SQLite
log (or the file named), ``anyio.sleep``, ``time.monotonic``, UTC wall-clock time and a
private ``random.Random``.

The types a caller writes against: a ``Prompt`` is a str or a sequence of chat messages
(mappings in the OpenAI shape: ``role``, ``content``, ``tool_calls``, ``tool_call_id``);
``Params`` are one call's request options (``temperature``, ``max_tokens``, ``stop``, ``seed``,
``tools``, ``tool_choice``, ``response_format``...), handed to the serving client as
``call(prompt, params=...)``, which merges them over its configured ``params`` for that call.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypedDict, Unpack, cast, overload

import anyio

from ..core.calls import CallOutcome
from ..core.clock import LoopTime
from ..core.engine import DEFAULT_GRACE, FailoverEngine
from ..core.events import Event
from ..core.fingerprint import fingerprinter
from ..core.health import HealthState
from ..core.livelog import WallClock
from ..core.policies import HealthPolicy, RetryPolicy
from ..core.pricing import Price
from ..core.projections import Metrics, Snapshot, fold
from ..core.protocols import (
    Clock,
    Durability,
    EventStore,
    Params,
    Prompt,
    Sleep,
    SnapshotLoader,
)
from ..core.scrub import register_secret
from ..core.streaming import FailoverStream, StreamSwitch
from ..storage import GroupCommitStore
from ..storage.sqlite import SQLiteEventStore
from .config import ConfigSource, FailoverConfig, RetentionConfig, load_config
from .retention import Retention, RetentionTask

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

Prices: TypeAlias = Mapping[str, Price | Mapping[str, float]]
"""By model id: a ``Price`` or ``{"input": ..., "output": ...}`` in USD per million tokens."""


class FailoverOptions(TypedDict, total=False):
    """The constructor's keywords that ``from_config`` also takes; each one given replaces
    what the configuration says (see ``MultiModelFailover``)."""

    health_policy: HealthPolicy | Mapping[str, Any] | None
    event_store: EventStore | str | os.PathLike[str] | None
    sleep: Sleep | None
    clock: Clock | None
    rng: random.Random | None
    wall_clock: WallClock | None
    durability: Durability
    fingerprint_prompts: bool
    replica: str | None
    follow_interval: float | None
    call_ids: Callable[[], str] | None
    retention: Retention | RetentionConfig | Mapping[str, Any] | None
    prices: Prices | None


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


def _random_call_ids() -> Callable[[], str]:
    """Call ids ``<8 random hex>-<n>``: unique across processes, ordered within one."""
    prefix = uuid.uuid4().hex[:8]
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


def _time_seams(
    clock: Clock | None, sleep: Sleep | None, wall_clock: WallClock | None
) -> dict[str, Any]:
    """The engine's clock, sleep, timer and wall clock from what the caller gave.

    A clock with its own ``sleep`` and ``move_on_after`` (a ``VirtualClock``) runs every wait
    and every timeout on its own time, and stamps events with its ``utc()``. A plain clock
    callable is read for every deadline while timeouts run on the event loop's timer: give one
    that runs at real speed.
    """
    full = clock is not None and callable(getattr(clock, "move_on_after", None))
    return {
        "clock": clock if clock is not None else time.monotonic,
        "sleep": sleep if sleep is not None else (clock.sleep if full else anyio.sleep),  # type: ignore[union-attr]
        "timer": clock if full else LoopTime(),
        "wall_clock": wall_clock
        if wall_clock is not None
        else (clock.utc if full and hasattr(clock, "utc") else utc_now),  # type: ignore[union-attr]
    }


class MultiModelFailover:
    """Ordered multi-model failover with retries, health checks and a replayable event log.

    ``clients``: a sequence or a mapping of model clients (``call(prompt)`` and
    ``health_check()``, sync or async; ``call(prompt, params=...)`` to take per-call options).
    See the package docs for every keyword. ``clock`` may be a ``VirtualClock`` (the test
    mode): its ``sleep``, timeouts and UTC time are then used too. ``call_ids`` makes call ids
    (default: a random prefix and a counter). ``retention`` (``adapters.retention.Retention``
    or a dict of its keys): while the engine is open (``async with``), archive the log's old
    events in the background. ``prices`` (by model id, USD per million input and output
    tokens): each attempt's reported usage gets a ``cost`` in the log and in ``metrics()``;
    an id that is not a configured model is a ``ValueError`` naming it.
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
        durability: Durability = "process",
        fingerprint_prompts: bool = False,
        replica: str | None = None,
        follow_interval: float | None = None,
        call_ids: Callable[[], str] | None = None,
        retention: Retention | RetentionConfig | Mapping[str, Any] | None = None,
        prices: Prices | None = None,
    ) -> None:
        policy = None if retention is None else Retention.coerce(retention)
        seams = _time_seams(clock, sleep, wall_clock)
        store = open_store(event_store, durability, replica=replica)
        try:
            self._retention = None if policy is None else _retention(store, policy, seams)
            self._engine = FailoverEngine(
                clients,
                retry_policy,
                health_check_interval,
                health_policy=health_policy,
                event_store=store,
                follow_interval=follow_interval,
                rng=rng if rng is not None else random.Random(),  # noqa: S311 - jitter, not crypto
                call_ids=call_ids if call_ids is not None else _random_call_ids(),
                fingerprint=fingerprinter(secrets.token_bytes(16)) if fingerprint_prompts else None,
                prices=prices,
                **seams,
            )
        except BaseException:
            if store is not event_store:
                store.close()
            raise
        self._owned_clients: list[Any] = []

    # -- the engine's surface ------------------------------------------------------------

    @property
    def engine(self) -> FailoverEngine:
        """The engine behind this facade (its rooms: registry, runner, monitor, log)."""
        return self._engine

    @property
    def event_store(self) -> EventStore:
        """The event log."""
        return self._engine.event_store

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy in force."""
        return self._engine.retry_policy

    @property
    def health_policy(self) -> HealthPolicy:
        """The health policy in force."""
        return self._engine.health_policy

    @property
    def health_check_interval(self) -> float:
        """Seconds between probe rounds."""
        return self._engine.health_check_interval

    @property
    def follow_interval(self) -> float | None:
        """Seconds between reads of a shared log (None: in each probe round)."""
        return self._engine.follow_interval

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The configured model ids, in configured order."""
        return self._engine.model_ids

    @property
    def states(self) -> dict[str, HealthState]:
        """Each configured model's health state now."""
        return self._engine.states

    @property
    def rotation(self) -> list[str]:
        """The model ids the next call would try, in order."""
        return self._engine.rotation

    @property
    def closed(self) -> bool:
        """Whether closing has begun: no new call is accepted."""
        return self._engine.closed

    def metrics(self) -> Metrics:
        """A copy of the live metrics; always equal to ``replay(event_store).metrics``."""
        return self._engine.metrics()

    def snapshot(self) -> Snapshot:
        """A copy of the whole live projection (metrics, states, audit trail)."""
        return self._engine.snapshot()

    def log_status(self) -> dict[str, Any]:
        """The event log's own health: write errors, dropped events, the last error."""
        return self._engine.log_status()

    def events(self) -> Iterator[Event]:
        """The stored events, oldest first."""
        return self._engine.events()

    async def call(
        self, prompt: Prompt, timeout: float | None = None, *, params: Params | None = None
    ) -> Any:
        """The first successful client's response, as is (see ``FailoverEngine.call``): a
        ``ModelResponse`` from the bundled clients. ``params``: this call's request options,
        sent to every client the call tries (``TypeError`` unless a mapping with str keys)."""
        return (
            await self._engine.call_with_outcome(prompt, timeout=timeout, params=params)
        ).response

    async def call_with_outcome(
        self, prompt: Prompt, *, timeout: float | None = None, params: Params | None = None
    ) -> CallOutcome:
        """As ``call``, with the serving model, counts and call id."""
        return await self._engine.call_with_outcome(prompt, timeout=timeout, params=params)

    @overload
    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: Literal["none"] | None = None,
        params: Params | None = None,
    ) -> FailoverStream[str]: ...

    @overload
    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: Literal["restart", "continue"],
        params: Params | None = None,
    ) -> FailoverStream[str | StreamSwitch]: ...

    def stream(
        self,
        prompt: Prompt,
        *,
        timeout: float | None = None,
        recovery: str | None = None,
        params: Params | None = None,
    ) -> FailoverStream[Any]:
        """The answer as text chunks; failover until the first chunk, and after it only with
        ``recovery`` (see ``FailoverEngine.stream``). ``.outcome`` once it has ended.
        ``params`` as for ``call``, checked at once."""
        return self._engine.open_stream(prompt, timeout, recovery, params)

    async def check_health(self) -> dict[str, HealthState]:
        """Probe every client not in maintenance now; returns the states afterwards."""
        return await self._engine.check_health()

    async def follow(self) -> int:
        """Fold in what other processes appended to a shared log; returns how many."""
        return await self._engine.follow()

    async def set_maintenance(
        self, model_id: str, on: bool, *, reason: str = "", by: str = "api"
    ) -> None:
        """Take ``model_id`` out of rotation (``on=True``) or put it back (``on=False``)."""
        await self._engine.set_maintenance(model_id, on, reason=reason, by=by)

    @property
    def retention(self) -> RetentionTask | None:
        """The background archiving of old events (None without ``retention``)."""
        return self._retention

    async def __aenter__(self) -> Self:
        await self._engine.__aenter__()
        if self._retention is not None:
            await self._retention.start()  # after the engine's loops: left before them
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            try:
                if self._retention is not None:
                    await self._retention.exit()
            finally:
                await self._engine.__aexit__(exc_type, exc, tb)
        finally:
            await self._close_clients()

    async def aclose(self, *, grace: float = DEFAULT_GRACE) -> None:
        """Close the engine (calls in flight get ``grace`` seconds), flush and close the log,
        close clients built from config. Background archiving stops first."""
        try:
            try:
                if self._retention is not None:
                    await self._retention.stop()
            finally:
                await self._engine.aclose(grace=grace)
        finally:
            await self._close_clients()

    async def _close_clients(self) -> None:
        owned, self._owned_clients = self._owned_clients, []
        for client in owned:
            close = getattr(client, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()

    def prometheus_text(self) -> str:
        """Live metrics in the Prometheus text format, with ``failover_event_log_errors_total``
        and ``failover_event_log_dropped_total`` (see ``adapters.exposition``)."""
        from .exposition import live_prometheus_text  # noqa: PLC0415 - prometheus_client on use

        return live_prometheus_text(self)

    @classmethod
    def from_config(
        cls,
        source: ConfigSource | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Unpack[FailoverOptions],
    ) -> Self:
        """Build from ``MULTI_MODEL_FAILOVER_CONFIG``, else ``source``, else config/risks.yaml.

        ``source``: a path to a YAML file, or the configuration document itself as a mapping
        (``{"multi_model_failover": {"clients": [...], ...}}``, what the YAML would give). The
        variable wins over either: an operator can replace a deployed configuration. ``env``
        stands in for ``os.environ``. Keyword ``overrides`` (``sleep``, ``clock``, ``rng``,
        ``event_store``, ``prices``...; see ``FailoverOptions``) replace what the document
        says. Raises ``ConfigError`` naming the key path and the source for a bad document or
        a missing key variable.
        """
        config = load_config(source, env=env)
        return cls.from_settings(config, env=env, **overrides)

    @classmethod
    def from_settings(
        cls,
        config: FailoverConfig,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Unpack[FailoverOptions],
    ) -> Self:
        """Build from an already loaded ``FailoverConfig``."""
        from .clients import build_clients  # noqa: PLC0415 - HTTP stack only when configured

        clients = build_clients(config.clients, env=env)
        options: dict[str, Any] = {
            "health_policy": config.health_policy,
            "event_store": config.event_log,
            "durability": config.durability,
            "replica": config.replica,
            "follow_interval": config.follow_interval,
            "retention": config.retention,
            "prices": config.prices or None,
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


def _retention(store: EventStore, policy: Retention, seams: Mapping[str, Any]) -> RetentionTask:
    """The background archiving of ``store`` on the engine's wall clock and sleep."""
    if not isinstance(store, GroupCommitStore):
        raise TypeError(
            f"retention needs an SQLite or PostgreSQL event store, not {type(store).__name__}"
        )
    return RetentionTask(store, policy, now=seams["wall_clock"], sleep=seams["sleep"])


def replay(
    source: EventStore | Iterable[Event] | str | os.PathLike[str],
    *,
    from_start: bool = False,
    lenient: bool = False,
) -> Snapshot:
    """Fold a log into a ``Snapshot``: metrics, per-model states and the audit trail.

    ``source``: a store, an iterable of events, the path of an SQLite event log or the
    ``postgresql://`` URL of a shared one. A log is folded from its latest snapshot (the store
    keeps one every so many events and at close) through the events after it;
    ``from_start=True`` folds every event from the log's base instead (its first event, or the
    snapshot an archive left at its cut) and trusts no other snapshot. ``lenient``: rows that
    do not decode are skipped (counted in the store's ``skipped``) rather than raising
    ``EventLogError``. An iterable of events is folded as it is.
    """
    if is_postgres_url(source):
        from ..storage.postgres import PostgresEventStore  # noqa: PLC0415 - optional extra

        with PostgresEventStore(str(source), create=False) as shared:
            return shared.snapshots.load(from_start=from_start, lenient=lenient)[0]
    if isinstance(source, str | os.PathLike):
        with SQLiteEventStore(source, create=False) as store:
            return store.snapshots.load(from_start=from_start, lenient=lenient)[0]
    loader = getattr(source, "snapshots", None)
    if callable(getattr(loader, "load", None)):
        return cast(SnapshotLoader, loader).load(from_start=from_start, lenient=lenient)[0]
    read = getattr(source, "read", None)
    if callable(read):
        return fold(read(lenient=True) if lenient else read())
    return fold(source)  # type: ignore[arg-type]
