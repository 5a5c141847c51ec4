"""The behaviour every event store backend must show, as one abstract test class.

A backend's test module subclasses ``EventStoreContract``, implements its hooks (``make_store``,
``corrupt``, ``refuse_writes``, ``hold_writes`` and, for a store that outlives its object,
``reopen`` and ``peer``) and marks the module ``pytestmark = pytest.mark.anyio``. Backend set-up
(files, servers, schemas) lives in those hooks, never in the tests below.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import gc
import re
import sys
import threading
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devs.risks.multi_model_failover.core.errors import EventLogError
from devs.risks.multi_model_failover.core.events import (
    EVENT_TYPES,
    AttemptStarted,
    Event,
)
from devs.risks.multi_model_failover.core.protocols import EventStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
# Each backend's subclass runs the same property test: Hypothesis sees several executors.
SUBCLASSED = [HealthCheck.differing_executors, HealthCheck.too_slow]


class StoreUnderTest(EventStore, Protocol):
    """What the contract uses beyond ``EventStore``: counters, ``flush``, ``count``."""

    errors: int
    dropped: int
    skipped: int
    unknown: collections.Counter[str]

    @property
    def location(self) -> str:
        """Where the log is, as messages name it."""

    @property
    def waiting(self) -> int:
        """Tasks now waiting in ``wait_committed``."""

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until queued events are committed."""

    def count(self) -> int:
        """How many events are stored."""

    def read(
        self, *, after: int = 0, lenient: bool = False, skip_unknown: bool | None = None
    ) -> Iterator[Event]:
        """Stored events; ``lenient`` skips rows that do not decode."""

    def read_since(self, after: int) -> tuple[list[tuple[Event, bool]], int]:
        """Every stored event past ``after``, each with whether this store wrote it."""


# -- events --------------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def _values(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a field type of our events, as they survive a JSON round trip."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_values(arg) for arg in args))
    if origin is tuple:
        return st.lists(_values(args[0]), max_size=5).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), _json_scalars, max_size=5)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-(2**63), 2**63 - 1),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=40),
        datetime: st.datetimes(timezones=st.just(UTC)),
    }
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(hint)
    return simple[hint]


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any event of class ``cls`` (``seq`` left for the store to assign)."""
    hints = typing.get_type_hints(cls)
    fields = {name: _values(hints[name]) for name in cls.__struct_fields__ if name != "seq"}
    return st.builds(cls, **fields)


any_event = st.one_of(*(event_strategy(cls) for cls in EVENT_TYPES.values()))
one_of_each_type = st.tuples(*(event_strategy(cls) for cls in EVENT_TYPES.values()))


def attempt(call_id: str, n: int = 1) -> AttemptStarted:
    """A small event; ``call_id`` and ``n`` say who appended it and in which order."""
    return AttemptStarted(
        at=T0 + timedelta(microseconds=n), call_id=call_id, model_id="primary", attempt=n
    )


def numbered(events: Sequence[Event], first: int) -> list[Event]:
    """``events`` as the store gives them back: numbered from ``first``."""
    return [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]


def newer_event(seq: int) -> str:
    """The stored form of an event of a type a newer version of the library writes."""
    return f'{{"seq":{seq},"type":"brand_new_event","at":"2026-01-01T00:00:00+00:00"}}'


def unnumbered(events: Sequence[Event]) -> list[Event]:
    """``events`` with their store-assigned ``seq`` cleared, for comparison."""
    return [msgspec.structs.replace(e, seq=0) for e in events]


def let_go(held: list[StoreUnderTest], threads: Iterable[threading.Thread]) -> None:
    """Drop the last reference to the store in ``held``, then wait for its ``threads`` to end.

    One of them may hold the store for a moment yet: the store's ``__del__`` then runs there.
    """
    held.clear()
    gc.collect()
    for thread in threads:
        thread.join(timeout=10)


class EventStoreContract:
    """Tests every event store backend passes; subclass and implement the hooks."""

    # -- hooks -----------------------------------------------------------------------------

    # Whether ``process``/``power`` callers wait for commits (an in-memory log has nothing to
    # wait for: its callers never wait, unless the store is strict).
    waits_for_commits = True

    def make_store(self, durability: str = "process", **options: Any) -> StoreUnderTest:
        """A new, empty store. ``options``: ``strict``, ``max_buffer``, ``close_timeout``."""
        raise NotImplementedError

    def skip_unless_waiting(self) -> None:
        if not self.waits_for_commits:
            pytest.skip("callers of this store never wait for commits")

    def reopen(self, store: StoreUnderTest) -> StoreUnderTest:
        """A new store object on the same (closed) log; skip for a store with no outside."""
        pytest.skip("this backend keeps nothing after its store object")

    def peer(self, store: StoreUnderTest) -> StoreUnderTest:
        """A second writer on the same log (another process would see it the same way)."""
        pytest.skip("this backend has a single writer")

    def peer_or_skip(self, store: StoreUnderTest) -> StoreUnderTest:
        """``peer(store)``; where the backend has no peers, ``store`` is closed and the test
        skipped."""
        try:
            return self.peer(store)
        except pytest.skip.Exception:
            store.close()
            raise

    def corrupt(self, store: StoreUnderTest, seq: int) -> None:
        """Damage the stored form of event ``seq`` so that it no longer decodes."""
        raise NotImplementedError

    def overwrite(self, store: StoreUnderTest, seq: int, type_: str, body: str) -> None:
        """Replace the stored row ``seq`` by one of type ``type_`` with JSON ``body`` (as
        another version of the library would have written it)."""
        raise NotImplementedError

    def refuse_writes(self, store: StoreUnderTest) -> contextlib.AbstractContextManager[None]:
        """While inside, every commit fails at once (full disk, read-only file...)."""
        raise NotImplementedError

    def hold_writes(self, store: StoreUnderTest) -> contextlib.AbstractContextManager[None]:
        """While inside (briefly), commits wait without failing (another writer's lock)."""
        raise NotImplementedError

    # -- reading and writing ---------------------------------------------------------------

    def test_a_new_store_is_empty(self) -> None:
        store = self.make_store()
        assert list(store.read()) == []
        assert store.last_seq() == 0
        assert store.count() == 0
        store.close()

    @settings(max_examples=25, deadline=None, suppress_health_check=SUBCLASSED)
    @given(events=one_of_each_type)
    def test_every_event_type_round_trips(self, events: tuple[Event, ...]) -> None:
        store = self.make_store("buffered")
        for event in events:
            store.append(event)
        assert list(store.read()) == numbered(events, 1)
        store.close()

    @settings(max_examples=40, deadline=None, suppress_health_check=SUBCLASSED)
    @given(events=st.lists(any_event, min_size=1, max_size=30))
    def test_any_events_round_trip_in_order(self, events: list[Event]) -> None:
        store = self.make_store("buffered")
        for event in events:
            store.append(event)
        assert list(store.read()) == numbered(events, 1)
        store.close()

    def test_seq_is_gap_free_across_batches(self) -> None:
        store = self.make_store("buffered")
        events = [attempt("c", n) for n in range(1, 301)]
        for i, event in enumerate(events):
            store.append(event)
            if i % 70 == 0:
                assert store.flush()
        stored = list(store.read())
        assert [e.seq for e in stored] == list(range(1, 301))
        assert unnumbered(stored) == events
        assert store.last_seq() == 300
        store.close()

    def test_read_after_gives_the_later_events(self) -> None:
        store = self.make_store("buffered")
        for n in range(1, 11):
            store.append(attempt("c", n))
        assert [e.seq for e in store.read(after=7)] == [8, 9, 10]
        assert list(store.read(after=10)) == []
        store.close()

    def test_read_streams_long_logs_in_order(self) -> None:
        store = self.make_store("buffered")
        total = 12_345
        for n in range(1, total + 1):
            store.append(attempt("c", n))
        stream = store.read()
        assert next(stream).seq == 1
        assert [e.seq for e in stream] == list(range(2, total + 1))
        store.close()

    def test_a_corrupt_row_is_named_or_skipped(self) -> None:
        store = self.make_store("buffered")
        for n in range(1, 6):
            store.append(attempt("c", n))
        assert store.flush()
        self.corrupt(store, 3)
        with pytest.raises(EventLogError, match=r"seq=3\b"):
            list(store.read())
        assert [e.seq for e in store.read(lenient=True)] == [1, 2, 4, 5]
        assert store.skipped == 1
        store.close()

    def test_an_event_of_a_newer_type_is_skipped_and_counted_once(
        self, log_records: list[dict[str, Any]]
    ) -> None:
        store = self.make_store("buffered")
        for n in range(1, 6):
            store.append(attempt("c", n))
        assert store.flush()
        self.overwrite(store, 3, "brand_new_event", newer_event(3))
        assert [e.seq for e in store.read()] == [1, 2, 4, 5]
        assert [e.seq for e in store.read(lenient=True)] == [1, 2, 4, 5]
        rows, cursor = store.read_since(0)
        assert ([e.seq for e, _ in rows], cursor) == ([1, 2, 4, 5], 5)
        assert store.unknown == {"brand_new_event": 1}  # one row, however often it is read
        assert store.skipped == 0
        warnings = [str(r["message"]) for r in log_records if r["level"].name == "WARNING"]
        assert len(warnings) == 1, warnings
        assert "skipped 1 event(s) of types this version does not know" in warnings[0]
        assert warnings[0].endswith(": brand_new_event (upgrade to read them)")
        with pytest.raises(EventLogError, match=r"seq=3 is a 'brand_new_event' event"):
            list(store.read(skip_unknown=False))
        store.close()

    def test_a_peers_event_of_a_newer_type_is_skipped_and_counted(self) -> None:
        store = self.make_store("buffered")
        other = self.peer_or_skip(store)
        for n in range(1, 4):
            other.append(attempt("theirs", n))
        assert other.flush()
        self.overwrite(store, 2, "brand_new_event", newer_event(2))
        events, cursor = store.read_others(0)
        assert ([e.seq for e in events], cursor) == ([1, 3], 3)
        assert store.unknown == {"brand_new_event": 1}
        assert store.skipped == 0
        other.close()
        store.close()

    @pytest.mark.parametrize(
        "body",
        [
            '{"type":"brand_new_event","at":"2026-01-01T00:00:00+00:00"}',  # no seq
            '{"seq":99,"type":"brand_new_event","at":"2026-01-01T00:00:00+00:00"}',  # not its own
            '{"seq":3,"type":"brand_new_event"}',  # no time
            '{"seq":3,"type":"attempt_started","at":"2026-01-01T00:00:00+00:00","attempt":"x"}',
        ],
        ids=["no-seq", "wrong-seq", "no-at", "known-type-wrong-field"],
    )
    def test_a_damaged_row_is_not_taken_for_a_newer_type(self, body: str) -> None:
        store = self.make_store("buffered")
        if getattr(store, "compact", False) and not body.startswith('{"seq":'):
            store.close()  # small rows keep seq in its column only: a body without one is normal
            pytest.skip("a small row's body never holds its seq")
        for n in range(1, 6):
            store.append(attempt("c", n))
        assert store.flush()
        self.overwrite(store, 3, "brand_new_event", body)
        with pytest.raises(EventLogError, match=r"seq=3 is not a valid event"):
            list(store.read())
        assert [e.seq for e in store.read(lenient=True)] == [1, 2, 4, 5]
        assert (store.skipped, store.unknown) == (1, {})
        store.close()

    def test_read_others_returns_the_peers_events_and_a_cursor(self) -> None:
        store = self.make_store("buffered")
        other = self.peer_or_skip(store)
        store.append(attempt("mine", 1))
        assert store.flush()
        other.append(attempt("theirs", 1))
        other.append(attempt("theirs", 2))
        assert other.flush()
        store.append(attempt("mine", 2))
        assert store.flush()
        events, cursor = store.read_others(0)
        assert [(e.call_id, e.seq) for e in events] == [("theirs", 2), ("theirs", 3)]
        assert cursor == 4
        assert store.read_others(cursor) == ([], 4)
        theirs, _ = other.read_others(0)
        assert [e.seq for e in theirs] == [1, 4]
        other.close()
        store.close()

    # -- waiting for commits ---------------------------------------------------------------

    async def test_process_mode_returns_once_committed(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("process")
        for n in range(1, 21):
            await store.wait_committed(store.append(attempt("c", n)))
            # count() does not flush: what it sees was committed when wait_committed returned.
            assert store.count() == n
        await store.aclose()

    async def test_power_mode_returns_once_committed(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("power")
        ticket = 0
        for n in range(1, 6):
            ticket = store.append(attempt("c", n))
        await store.wait_committed(ticket)
        assert store.count() == 5
        await store.aclose()

    async def test_buffered_mode_never_waits(self) -> None:
        store = self.make_store("buffered")
        with self.hold_writes(store):
            ticket = store.append(attempt("c"))
            with anyio.fail_after(5):
                await store.wait_committed(ticket)
        assert store.flush()
        assert store.count() == 1
        store.close()

    async def test_a_waiter_waits_for_a_held_commit(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("process")
        done = anyio.Event()

        async def wait(ticket: int) -> None:
            await store.wait_committed(ticket)
            done.set()

        async with anyio.create_task_group() as group:
            with self.hold_writes(store):
                group.start_soon(wait, store.append(attempt("c")))
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()
                assert store.waiting == 1
            await done.wait()
        assert store.count() == 1
        assert store.waiting == 0
        await store.aclose()

    async def test_concurrent_appends_from_many_tasks(self) -> None:
        store = self.make_store("process")

        async def task(name: str) -> None:
            for n in range(1, 21):
                await store.wait_committed(store.append(attempt(name, n)))

        async with anyio.create_task_group() as group:
            for t in range(50):
                group.start_soon(task, f"task-{t}")
        stored = list(store.read())
        assert [e.seq for e in stored] == list(range(1, 1001))
        by_task: dict[str, list[int]] = {}
        for event in stored:
            assert isinstance(event, AttemptStarted)
            by_task.setdefault(event.call_id, []).append(event.attempt)
        assert by_task == {f"task-{t}": list(range(1, 21)) for t in range(50)}
        await store.aclose()

    async def test_a_thousand_concurrent_waiters_all_return(self) -> None:
        store = self.make_store("process")
        returned: list[int] = []

        async def wait(ticket: int) -> None:
            await store.wait_committed(ticket)
            returned.append(ticket)

        async with anyio.create_task_group() as group:
            for n in range(1000):
                group.start_soon(wait, store.append(attempt("c", n)))
        assert sorted(returned) == list(range(1, 1001))
        if not self.waits_for_commits:  # its callers returned at once: commits may lag
            assert store.flush()
        assert store.count() == 1000
        assert store.waiting == 0
        await store.aclose()

    async def test_a_cancelled_waiter_leaves_nothing_behind(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("process")
        with self.hold_writes(store):
            ticket = store.append(attempt("c"))
            with anyio.move_on_after(0.05) as scope:
                await store.wait_committed(ticket)
            assert scope.cancelled_caught
            assert store.waiting == 0
        await store.wait_committed(ticket)
        assert store.count() == 1
        await store.aclose()

    async def test_waiters_return_while_writes_fail(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("process", close_timeout=10)
        with self.refuse_writes(store):
            ticket = store.append(attempt("c", 1))
            with anyio.fail_after(5):
                await store.wait_committed(ticket)
            assert store.errors >= 1
            store.append(attempt("c", 2))  # appending still works
        await store.aclose()  # retries at once, now that writes succeed
        assert [e.seq for e in store.read()] == [1, 2]
        assert store.dropped == 0

    async def test_a_strict_store_raises_while_writes_fail(self) -> None:
        store = self.make_store("process", strict=True, close_timeout=10)
        with self.refuse_writes(store):
            ticket = store.append(attempt("c"))
            with pytest.raises(EventLogError):
                await store.wait_committed(ticket)
        await store.aclose()
        assert store.count() == 1

    async def test_waiters_wake_when_a_held_commit_lands_at_close(self) -> None:
        self.skip_unless_waiting()
        store = self.make_store("process")
        returned: list[int] = []

        async def wait(ticket: int) -> None:
            await store.wait_committed(ticket)
            returned.append(ticket)

        async with anyio.create_task_group() as group:
            with self.hold_writes(store):
                for n in range(10):
                    group.start_soon(wait, store.append(attempt("c", n)))
                await anyio.wait_all_tasks_blocked()
                group.start_soon(store.aclose)
                await anyio.wait_all_tasks_blocked()
                assert returned == []
        assert sorted(returned) == list(range(1, 11))
        assert store.waiting == 0
        assert store.count() == 10

    async def test_close_gives_up_on_a_log_that_stays_unwritable(self) -> None:
        store = self.make_store("process", close_timeout=0.2)
        strict = self.make_store("process", close_timeout=0.2, strict=True)
        with self.refuse_writes(store), self.refuse_writes(strict):
            tickets = [store.append(attempt("c", n)) for n in range(3)]
            strict_ticket = strict.append(attempt("c"))
            async with anyio.create_task_group() as group:
                group.start_soon(store.aclose)
                group.start_soon(strict.aclose)
        assert store.dropped == 3
        await store.wait_committed(tickets[-1])  # returns: the event is given up, not waited on
        with pytest.raises(EventLogError):
            await strict.wait_committed(strict_ticket)
        assert store.count() == 0

    # -- the bounded buffer ----------------------------------------------------------------

    def test_overflow_is_counted_never_raised(self) -> None:
        store = self.make_store("buffered", max_buffer=10)
        with self.hold_writes(store):
            for n in range(40):
                store.append(attempt("c", n))
        store.close()
        assert store.dropped > 0
        assert store.count() + store.dropped == 40

    def test_a_strict_store_raises_on_overflow(self) -> None:
        store = self.make_store("buffered", max_buffer=10, strict=True)

        def fill() -> None:
            for n in range(40):
                store.append(attempt("c", n))

        with self.hold_writes(store), pytest.raises(EventLogError, match="buffer full"):
            fill()
        store.close()

    # -- closing ---------------------------------------------------------------------------

    def test_close_flushes_and_is_idempotent(self) -> None:
        store = self.make_store("buffered")
        for n in range(1, 101):
            store.append(attempt("c", n))
        store.close()
        store.close()
        assert store.count() == 100
        reopened = self.reopen(store)
        assert [e.seq for e in reopened.read()] == list(range(1, 101))
        reopened.close()

    async def test_aclose_flushes(self) -> None:
        store = self.make_store("buffered")
        for n in range(1, 51):
            store.append(attempt("c", n))
        await store.aclose()
        await store.aclose()
        assert store.last_seq() == 50

    def test_a_closed_store_stays_readable(self) -> None:
        store = self.make_store("buffered")
        store.append(attempt("c"))
        store.close()
        assert [e.seq for e in store.read()] == [1]
        assert store.last_seq() == 1
        assert store.count() == 1
        assert store.read_others(0) == ([], 1)

    def test_append_after_close_raises(self) -> None:
        store = self.make_store()
        store.close()
        with pytest.raises(EventLogError, match="closed"):
            store.append(attempt("c"))

    close_races = 100  # rounds of the race below: enough to lose an event most runs if racy

    def test_appends_racing_close_are_stored_counted_or_refused(self) -> None:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads take turns often: the race shows in few rounds
        try:
            for _ in range(self.close_races):
                self._race_appends_with_close(threads=4)
        finally:
            sys.setswitchinterval(switch_interval)

    def _race_appends_with_close(self, threads: int) -> None:
        """Close while ``threads`` threads append; each appends until it is refused."""
        store = self.make_store("buffered")
        appended = [0] * threads
        refused = [0] * threads
        start = threading.Barrier(threads + 1)
        going = threading.Event()

        def append_until_refused(me: int) -> None:
            start.wait()
            while True:
                try:
                    store.append(attempt(f"t{me}", appended[me]))
                except EventLogError:
                    refused[me] += 1
                    return
                appended[me] += 1
                if appended[me] == 10:
                    going.set()

        workers = [threading.Thread(target=append_until_refused, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        going.wait(timeout=30)
        store.close()
        for worker in workers:
            worker.join(timeout=30)
        assert refused == [1] * threads, "an appender was never refused"
        stored, dropped = store.count(), store.dropped
        assert stored + dropped == sum(appended), (
            f"{sum(appended)} appended, {stored} stored, {dropped} dropped"
        )

    def test_an_unclosed_store_warns_and_stops_when_collected(self) -> None:
        before = set(threading.enumerate())
        held = [self.make_store("buffered")]
        location = held[0].location
        held[0].append(attempt("c"))
        threads = set(threading.enumerate()) - before
        assert threads, "no writer thread"
        with pytest.warns(ResourceWarning, match=f"^unclosed event log {re.escape(location)}$"):
            let_go(held, threads)
        assert [t.name for t in threads if t.is_alive()] == []

    def test_an_unclosed_store_writes_what_it_queued_when_collected(self) -> None:
        held = [self.make_store("buffered")]
        reader = self.peer_or_skip(held[0])
        before = set(threading.enumerate())
        for n in range(1, 1001):
            held[0].append(attempt("c", n))
        threads = set(threading.enumerate()) - before
        with pytest.warns(ResourceWarning, match="unclosed event log"):
            let_go(held, threads)
        assert reader.count() == 1000
        reader.close()
