"""Hostile tests for issue 16: ``failover whatif`` and ``core.whatif.what_if``.

Each test asserts what a user would rightly expect. Logs are recorded the way users make them:
a real ``FailoverEngine`` with scripted clients on the what-if's own virtual clock
(``SimClock``), into real SQLite files, read back and replayed; the command line runs
in-process over those files.

The tests above "what held up" show defects and fail on the code they were written against
(streams that broke mid-answer do not calibrate; added maintenance windows and recorded
operator actions toggle each other instead of adding up; an archived log's error does not
name its archive; naive datetimes end in Python's bare TypeError). Those below guard what held.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner, Result

from devs.risks.multi_model_failover.adapters.cli.commands import app
from devs.risks.multi_model_failover.adapters.cli.demo import create_marked_log, play
from devs.risks.multi_model_failover.adapters.cli.render import Output
from devs.risks.multi_model_failover.core.engine import FailoverEngine
from devs.risks.multi_model_failover.core.errors import ModelError
from devs.risks.multi_model_failover.core.events import Event
from devs.risks.multi_model_failover.core.health import HealthState
from devs.risks.multi_model_failover.core.responses import ModelResponse, Usage
from devs.risks.multi_model_failover.core.whatif import (
    Change,
    MaintenanceWindow,
    WhatIf,
    what_if,
)
from devs.risks.multi_model_failover.core.whatif.simclock import INF, SimClock
from devs.risks.multi_model_failover.storage.sqlite import SQLiteEventStore

START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


# -- a recorder: a real engine, scripted clients, virtual time -----------------------------


@dataclass(frozen=True)
class Answer:
    """How a model answers over ``[start, end)``: ``kind`` None is a success."""

    start: float
    end: float
    kind: str | None = None
    latency: float = 0.3
    retry_after: float | None = None
    probe_ok: bool = True
    break_after_chunks: int | None = None  # a stream that breaks after this many chunks


class Scripted:
    """A client that answers as its ``Answer``s say at the virtual instant of the attempt."""

    def __init__(self, name: str, answers: Sequence[Answer], sim: SimClock, latency: float):
        self.name = name
        self.answers = list(answers)
        self.sim = sim
        self.latency = latency

    def _now(self) -> Answer | None:
        for answer in self.answers:
            if answer.start <= self.sim.now < answer.end:
                return answer
        return None

    async def call(self, prompt: str) -> ModelResponse:
        answer = self._now()
        if answer is not None and answer.kind is not None:
            await self.sim.sleep(answer.latency)
            raise ModelError(
                f"{answer.kind} from {self.name}", kind=answer.kind, retry_after=answer.retry_after
            )
        await self.sim.sleep(answer.latency if answer is not None else self.latency)
        return ModelResponse(
            text="ok", model=self.name, usage=Usage(input_tokens=10, output_tokens=5)
        )

    def stream(self, prompt: str) -> AsyncIterator[str]:
        answer = self._now()
        return self._chunks(answer)

    async def _chunks(self, answer: Answer | None) -> AsyncIterator[str]:
        latency = answer.latency if answer is not None else self.latency
        if answer is not None and answer.kind is not None and answer.break_after_chunks is None:
            await self.sim.sleep(latency)
            raise ModelError(f"{answer.kind} from {self.name}", kind=answer.kind)
        for index in range(4):
            await self.sim.sleep(latency / 4)
            if (
                answer is not None
                and answer.break_after_chunks is not None
                and index == answer.break_after_chunks
            ):
                raise ModelError(f"{answer.kind} from {self.name}", kind=answer.kind or "server")
            yield f"chunk{index} "

    async def health_check(self) -> bool:
        await self.sim.sleep(0.05)
        answer = self._now()
        return True if answer is None else answer.probe_ok


@dataclass(frozen=True)
class Caller:
    """A call (or a stream) starting at ``at``; ``cancel_after``: its caller gives up then."""

    at: float
    timeout: float | None = None
    cancel_after: float | None = None
    stream: bool = False
    recovery: str | None = None


@dataclass
class Script:
    models: tuple[str, ...] = ("primary", "secondary")
    answers: Mapping[str, Sequence[Answer]] = field(default_factory=dict)
    callers: Sequence[Caller] = ()
    retry_policy: Mapping[str, Any] = field(default_factory=dict)
    health_policy: Mapping[str, Any] = field(default_factory=dict)
    probes_at: Sequence[float] = ()
    # engine restarts: (at, models, retry keys over the script's)
    restarts: Sequence[tuple[float, tuple[str, ...], Mapping[str, Any]]] = ()
    # operator actions in the engine's own process: (at, model, into maintenance)
    actions: Sequence[tuple[float, str, bool]] = ()
    latency: float = 0.4
    seed: int = 3


async def record(path: Path, script: Script) -> list[Event]:
    """Play ``script`` through real engines into the SQLite log at ``path``; its events."""
    sim = SimClock(START)
    rng = random.Random(script.seed)
    ids = itertools.count(1)
    engines: list[FailoverEngine] = []

    def build(models: tuple[str, ...], retry: Mapping[str, Any]) -> FailoverEngine:
        clients = {m: Scripted(m, script.answers.get(m, ()), sim, script.latency) for m in models}
        engine = FailoverEngine(
            clients,
            {**script.retry_policy, **retry},
            30,
            health_policy=dict(script.health_policy),
            event_store=SQLiteEventStore(path, durability="buffered"),
            sleep=sim.sleep,
            clock=lambda: sim.now + 500.0,
            timer=sim,  # type: ignore[arg-type]  # the SimClock's scopes
            wall_clock=sim.utc,
            rng=random.Random(rng.random()),
            call_ids=lambda: f"call-{next(ids)}",
        )
        engine.log.load()
        return engine

    engines.append(build(script.models, {}))

    async def one(caller: Caller) -> None:
        engine = engines[-1]
        cancel = (
            sim.scope(sim.now + caller.cancel_after)
            if caller.cancel_after is not None
            else contextlib.nullcontext()
        )
        with cancel, contextlib.suppress(ModelError):
            if caller.stream:
                async with engine.open_stream("hello", caller.timeout, caller.recovery) as chunks:
                    async for _ in chunks:
                        pass
            else:
                await engine.call_with_outcome("hello", timeout=caller.timeout)

    async def probe() -> None:
        engine = engines[-1]
        for model_id in engine.model_ids:
            if engine.states[model_id] is not HealthState.MAINTENANCE:
                await engine.monitor._probe(engine.registry[model_id])

    async def restart(models: tuple[str, ...], retry: Mapping[str, Any]) -> None:
        old = engines[-1]
        while old.runner.ledger.in_flight:
            await sim.sleep(0.25)
        await old.aclose()
        engines.append(build(models, retry))

    async def act(model_id: str, on: bool) -> None:
        await engines[-1].set_maintenance(model_id, on, reason="ops", by="api")

    for at, model_id, on in script.actions:
        sim.at(at, INF, partial(sim.spawn, act, model_id, on))
    for caller in script.callers:
        sim.at(caller.at, INF, partial(sim.spawn, one, caller))
    for at in script.probes_at:
        sim.at(at, INF, partial(sim.spawn, probe))
    for at, models, retry in script.restarts:
        sim.at(at, INF, partial(sim.spawn, restart, models, retry))
    await sim.run()
    for engine in engines:
        if not engine.closed:
            await engine.aclose()
    with SQLiteEventStore(path, create=False) as store:
        return list(store.read())


async def replayed(
    path: Path, script: Script, change: Change | None = None, **kwargs: Any
) -> WhatIf:
    events = await record(path, script)
    return await what_if(events, change, strict=False, **kwargs)


def mismatches(result: WhatIf) -> list[Any]:
    return list(result.report.calibration.mismatches[:2])


pytestmark = pytest.mark.anyio


# -- streams ---------------------------------------------------------------------------------


async def test_a_stream_that_breaks_mid_answer_calibrates(tmp_path: Path) -> None:
    """The docs: "Streams are replayed as calls", and calibration must reproduce the log. A
    stream that broke after its first chunks (recovery "none", the default) failed with
    ``stream_interrupted`` and was tried on no other model. Replayed as a call, the engine
    fails over to the secondary (a model the log never saw answer: ``unknown``): the
    recorded run itself does not calibrate."""
    script = Script(
        answers={"primary": [Answer(10, 20, kind="server", break_after_chunks=2)]},
        callers=[Caller(at=i * 2.0 + 0.013, stream=True) for i in range(20)],
        retry_policy={"jitter": "none"},
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.calibration.calls == 20
    assert result.report.calibration.ok, mismatches(result)


@pytest.mark.parametrize("recovery", ["restart", "continue"])
async def test_a_stream_rescued_by_another_model_calibrates(tmp_path: Path, recovery: str) -> None:
    script = Script(
        answers={"primary": [Answer(10, 20, kind="server", break_after_chunks=2)]},
        callers=[Caller(at=i * 2.0 + 0.013, stream=True, recovery=recovery) for i in range(20)],
        retry_policy={"jitter": "none"},
    )
    result = await replayed(tmp_path / "log.sqlite3", script)
    assert result.report.calibration.ok, mismatches(result)


# -- maintenance the what-if adds ------------------------------------------------------------


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def secondary_load() -> Script:
    """The primary fails every call (its health endpoint says fine), the secondary serves."""
    return Script(
        answers={"primary": [Answer(0, 1000, kind="server", latency=0.113)]},
        callers=[Caller(at=i * 1.0 + 0.017) for i in range(60)],
        retry_policy={"max_attempts": 1},
        health_policy={"degraded_after": 1000, "unhealthy_after": 1000},
    )


async def test_a_window_inside_a_longer_one_does_not_end_the_longer_one(tmp_path: Path) -> None:
    """`--maintenance secondary@T0` (from then on) and `--maintenance secondary@T1-T2` inside
    it: the secondary stays out of rotation to the end; the inner window's end must not put
    it back (the two are a union, as two operators' plans would be)."""
    events = await record(tmp_path / "log.sqlite3", secondary_load())
    only_long = Change(maintenance=(MaintenanceWindow(model_id="secondary", start=at(10)),))
    both = Change(
        maintenance=(
            MaintenanceWindow(model_id="secondary", start=at(10)),
            MaintenanceWindow(model_id="secondary", start=at(20), end=at(30)),
        )
    )
    alone = (await what_if(events, only_long)).report
    together = (await what_if(events, both)).report
    assert alone.what_if.by_model["secondary"].attempts == 10  # calls 0..9 only
    assert together.what_if.by_model["secondary"].attempts == 10, (
        "the inner window's end put the secondary back into rotation"
    )


async def test_a_recorded_operator_ending_maintenance_does_not_end_the_what_ifs(
    tmp_path: Path,
) -> None:
    """The log: an operator had the secondary out from 40 s to 45 s. The what-if: the
    secondary in maintenance from 10 s on. The recorded "back in" at 45 s ends the
    operator's own spell, not the what-if's: no call after 10 s may reach the secondary."""
    script = secondary_load()
    script.actions = [(40.0, "secondary", True), (45.0, "secondary", False)]
    events = await record(tmp_path / "log.sqlite3", script)
    recorded = (await what_if(events)).report
    assert recorded.recorded.by_model["secondary"].attempts == 55  # calls 40..44 failed
    change = Change(maintenance=(MaintenanceWindow(model_id="secondary", start=at(10)),))
    report = (await what_if(events, change)).report
    assert report.what_if.by_model["secondary"].attempts == 10, (
        "the recorded action at 45 s put the secondary back despite the what-if's maintenance"
    )


async def test_a_what_if_window_ending_inside_a_recorded_spell_does_not_cut_it_short(
    tmp_path: Path,
) -> None:
    """The log: an operator had the secondary out from 40 s to 45 s. The what-if adds
    maintenance from 35 s to 42 s. The secondary is out from 35 s to 45 s: the what-if's
    end at 42 s must not undo the operator's recorded spell (calls 42..44 stay off it)."""
    script = secondary_load()
    script.actions = [(40.0, "secondary", True), (45.0, "secondary", False)]
    events = await record(tmp_path / "log.sqlite3", script)
    change = Change(
        maintenance=(MaintenanceWindow(model_id="secondary", start=at(35), end=at(42)),)
    )
    report = (await what_if(events, change)).report
    assert report.what_if.by_model["secondary"].attempts == 50, (
        "the what-if's window end put the secondary back inside the recorded maintenance"
    )


# -- the command line --------------------------------------------------------------------------


def cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's incident (the commands only read it)."""
    path = tmp_path_factory.mktemp("demo") / "events.sqlite3"
    create_marked_log(path)
    anyio.run(lambda: play(path, seed=7, out=Output(stream=io.StringIO())))
    return path


def test_an_archived_log_names_the_archive_that_holds_its_engine_start(
    demo_log: Path, tmp_path: Path
) -> None:
    """After `failover archive`, the engine start is in the archive. `state --at` and
    `timeline` name the archive (or read it with --archive); `whatif` says only that the
    log "holds no engine_started event", leaving the user to guess why and where it went."""
    live = tmp_path / "live.sqlite3"
    live.write_bytes(demo_log.read_bytes())
    archive = tmp_path / "old.sqlite3"
    with SQLiteEventStore(live, create=False) as store:
        events = list(store.read())
    middle = events[len(events) // 2].at
    moved = cli("archive", live, "--before", middle.isoformat(), "--to", archive)
    assert moved.exit_code == 0, moved.stderr
    result = cli("whatif", live, "--since", middle.isoformat())
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(archive) in result.stderr, result.stderr


# -- the library's arguments -------------------------------------------------------------------


async def test_a_naive_since_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    """``what_if(..., since=datetime(...))`` without a timezone: the docstring promises a
    ``ValueError`` naming what is wrong; Python's bare "can't compare offset-naive and
    offset-aware datetimes" names nothing."""
    events = await record(tmp_path / "log.sqlite3", secondary_load())
    with pytest.raises(ValueError, match="since"):
        await what_if(events, since=datetime(2026, 5, 4, 9, 0, 20))


async def test_a_naive_maintenance_window_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    events = await record(tmp_path / "log.sqlite3", secondary_load())
    window = MaintenanceWindow(model_id="secondary", start=datetime(2026, 5, 4, 9, 0, 20))
    with pytest.raises(ValueError, match="maintenance"):
        await what_if(events, Change(maintenance=(window,)))


# -- what held up (guards) ---------------------------------------------------------------------


def test_the_same_what_if_on_asyncio_and_trio_gives_the_same_report(tmp_path: Path) -> None:
    script = Script(
        models=("primary", "secondary", "tertiary"),
        answers={
            "primary": [
                Answer(2.013, 12.31, kind="rate_limited", retry_after=1.5137, latency=0.1031)
            ],
            "secondary": [Answer(5.11, 25.3, kind="timeout", latency=2.0173)],
        },
        callers=[
            Caller(at=i * 0.31 + 0.013, timeout=3.3113 if i % 4 == 0 else None) for i in range(80)
        ],
        retry_policy={"jitter": "full", "max_attempts": 3, "attempt_timeout": 1.2343},
        probes_at=[0.37, 5.37, 10.37, 15.37, 20.37],
    )
    events = anyio.run(record, tmp_path / "log.sqlite3", script)
    change = Change(retry_policy={"max_attempts": 4, "jitter": "decorrelated"})
    reports = [
        anyio.run(lambda: what_if(events, change), backend=backend).report
        for backend in ("asyncio", "trio", "asyncio")
    ]
    assert reports[0].calibration.ok
    assert reports[0] == reports[1] == reports[2]


@pytest.mark.parametrize(
    "policy",
    [
        "retry_policy: {max_attempts: 1}",
        "retry_policy: {jitter: full, max_attempts: 4}",
        "retry_policy: {call_budget: 0.5}",
        "health_check_interval: 0.5",
        "retry_policy: {max_total_attempts: 1}",
        "retry_policy: {error_actions: {rate_limited: fail}}",
    ],
)
def test_the_reports_figures_add_up(demo_log: Path, tmp_path: Path, policy: str) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(f"multi_model_failover:\n  {policy}\n", encoding="utf-8")
    result = cli("whatif", demo_log, "--policy", file, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["calibration"]["ok"]
    assert document["inferred"]["answers"] <= document["inferred"]["of"]
    for name in ("recorded", "what_if"):
        side = document[name]
        assert side["calls"] == 170
        ended = side["calls_succeeded"] + side["calls_failed"] + side["calls_cancelled"]
        assert ended == side["calls"]
        by_model = side["by_model"].values()
        assert sum(m["attempts"] for m in by_model) == side["attempts"]
        assert sum(m["calls_served"] for m in by_model) == side["calls_succeeded"]
        assert all(m["successes"] + m["failures"] == m["attempts"] for m in by_model)
        latency = side["latency"]
        if latency["max"] is not None:
            assert latency["p50"] <= latency["p95"] <= latency["max"]
    again = cli("whatif", demo_log, "--policy", file, "--format", "json")
    assert again.stdout == result.stdout  # the same what-if, the same answer


def test_hostile_model_ids_are_escaped_in_the_html(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    script = Script(
        models=(evil, "a&b\"'"),
        answers={evil: [Answer(3.01, 8.01, kind="server")]},
        callers=[Caller(at=i * 1.0 + 0.013) for i in range(12)],
        probes_at=[0.0, 5.0],
    )
    path = tmp_path / "log.sqlite3"
    anyio.run(record, path, script)
    result = cli("whatif", path, "--format", "html", "--without", "a&b\"'")
    assert result.exit_code == 0, result.stderr
    assert "<script>alert" not in result.stdout
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result.stdout


def test_a_log_with_only_probes_reports_zero_calls(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    anyio.run(record, path, Script(probes_at=[0.5, 5.5]))
    for form in ("table", "json", "html"):
        result = cli("whatif", path, "--format", form)
        assert result.exit_code == 0, result.stderr
    document = json.loads(cli("whatif", path, "--format", "json").stdout)
    assert document["recorded"]["calls"] == document["what_if"]["calls"] == 0
    assert document["recorded"]["probes"] == 4


def test_a_what_if_leaving_an_engine_no_client_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The second engine ran the secondary alone: `--without secondary` leaves it none."""
    path = tmp_path / "log.sqlite3"
    script = Script(
        callers=[Caller(at=i * 1.0 + 0.013) for i in range(20)],
        restarts=[(10.5, ("secondary",), {})],
    )
    anyio.run(record, path, script)
    result = cli("whatif", path, "--without", "secondary")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no client" in result.stderr
