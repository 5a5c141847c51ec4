"""Per-call overhead: every contender on every scenario, in one process, interleaved.

pyperf does the measuring: loop calibration, warmups, values and statistics
(``Runner.bench_time_func`` in ``--in-process`` mode). To interleave, every case is measured
in rounds: in each round every case gets one pyperf run, in a seeded shuffled order, so slow
drift of the machine (another process, the log files growing, the heap) is spread over all
contenders alike. The runs of a case are then merged into one ``pyperf.Benchmark``.

All contenders live on one asyncio event loop for the whole run; each timed value is
``loops`` sequential calls, or ``loops`` rounds of ``asyncio.gather`` over ``concurrency``
calls (pyperf's ``inner_loops``, so figures are amortised per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyperf
from contenders import build
from fakes import PROMPT, Scenario


@dataclass(frozen=True)
class Case:
    """One contender on one scenario at one concurrency."""

    scenario: Scenario
    contender: str
    concurrency: int = 1

    @property
    def key(self) -> str:
        return f"{self.scenario.name}/x{self.concurrency}/{self.contender}"


@dataclass(frozen=True)
class Result:
    """The merged pyperf benchmark of one case; figures per call, in microseconds."""

    case: Case
    bench: pyperf.Benchmark

    @property
    def median_us(self) -> float:
        return self.bench.median() * 1e6

    @property
    def stdev_us(self) -> float:
        return self.bench.stdev() * 1e6 if self.bench.get_nvalue() > 1 else 0.0

    @property
    def values(self) -> int:
        return self.bench.get_nvalue()


async def timed(contender: Any, loops: int, concurrency: int) -> float:
    """``loops`` calls (or gathers of ``concurrency`` calls); the seconds they took."""
    call = contender.call
    prompt = PROMPT
    timer = time.perf_counter
    if concurrency == 1:
        start = timer()
        for _ in range(loops):
            await call(prompt)
        return timer() - start
    gather = asyncio.gather
    batch = range(concurrency)
    start = timer()
    for _ in range(loops):
        await gather(*[call(prompt) for _ in batch])
    return timer() - start


class Harness:
    """Builds the contenders once, checks each scenario, then measures in rounds."""

    def __init__(
        self,
        runner: pyperf.Runner,
        loop: asyncio.AbstractEventLoop,
        workdir: Path,
        *,
        rounds: int,
        seed: int = 0,
    ) -> None:
        self.runner = runner
        self.loop = loop
        self.workdir = workdir
        self.rounds = rounds
        self.seed = seed

    def _time(self, loops: int, contender: Any, concurrency: int) -> float:
        seconds = self.loop.run_until_complete(timed(contender, loops, concurrency))
        # Untimed: drain the log, so that no backlog slows the next case down.
        self.loop.run_until_complete(contender.settle())
        return seconds

    async def _build(self, case: Case) -> Any:
        return build(case.contender, case.scenario, self.workdir)

    def _prepare(self, cases: Sequence[Case]) -> dict[str, Any]:
        built: dict[str, Any] = {}
        for case in cases:
            contender = self.loop.run_until_complete(self._build(case))
            self.loop.run_until_complete(timed(contender, 3, case.concurrency))
            contender.check(3 * case.concurrency)
            self.loop.run_until_complete(contender.settle())
            built[case.key] = contender
        return built

    def run(self, cases: Sequence[Case]) -> list[Result]:
        """Measure every case ``rounds`` times, interleaved; one merged result per case."""
        built = self._prepare(cases)
        # Keep the imported modules and the contenders out of the collector's way: every
        # contender then pays only for the garbage it makes itself.
        gc.collect()
        gc.freeze()
        runs: dict[str, list[pyperf.Run]] = {case.key: [] for case in cases}
        loops: dict[str, int] = {}
        args = self.runner.args
        started = time.perf_counter()
        try:
            for index in range(self.rounds):
                order = list(cases)
                random.Random(self.seed + index).shuffle(order)
                for case in order:
                    bench = self._measure(case, built[case.key], index, loops.get(case.key, 0))
                    values = [run for run in bench.get_runs() if run.values]
                    loops[case.key] = values[-1].get_loops()
                    runs[case.key].extend(values)
                elapsed = time.perf_counter() - started
                print(f"  round {index + 1}/{self.rounds} done ({elapsed:.0f} s)", file=sys.stderr)
        finally:
            args.loops = 0
            for contender in built.values():
                self.loop.run_until_complete(contender.close())
            gc.unfreeze()
        return [Result(case, _merge(case.key, runs[case.key])) for case in cases]

    def _measure(self, case: Case, contender: Any, index: int, loops: int) -> pyperf.Benchmark:
        # Calibrate the loop count in the first round only; later rounds reuse it.
        self.runner.args.loops = loops
        with contextlib.redirect_stdout(io.StringIO()):
            bench = self.runner.bench_time_func(
                f"{case.key} #{index + 1}",
                self._time,
                contender,
                case.concurrency,
                inner_loops=case.concurrency,
            )
        self.runner.args.loops = 0
        if bench is None:
            raise RuntimeError(f"pyperf returned no result for {case.key}")
        return bench


def _merge(name: str, runs: list[pyperf.Run]) -> pyperf.Benchmark:
    renamed = [
        pyperf.Run(
            run.values,
            warmups=run.warmups,
            metadata={**run.get_metadata(), "name": name},
            collect_metadata=False,
        )
        for run in runs
    ]
    return pyperf.Benchmark(renamed)
