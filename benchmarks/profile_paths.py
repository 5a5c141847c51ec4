"""Profile the engine's hot path: ``python benchmarks/profile_paths.py [SCENARIO] [MODE]``.

SCENARIO: success, failover or retry (default success); MODE: memory, buffered, process or
power (default buffered). Prints cProfile's top functions by own time for the caller's thread
(the log's writer thread is not in it), or a pyinstrument call tree with ``--pyinstrument``
(``pip install pyinstrument``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
from pathlib import Path

from contenders import EngineContender
from fakes import SCENARIOS
from overhead import timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="success")
    parser.add_argument("mode", nargs="?", default="buffered")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--pyinstrument", action="store_true")
    args = parser.parse_args()
    scenario = next(s for s in SCENARIOS if s.name == args.scenario)
    with tempfile.TemporaryDirectory(prefix="failover-profile-") as tmp:
        loop = asyncio.new_event_loop()
        contender = EngineContender(scenario, args.mode, Path(tmp))
        loop.run_until_complete(timed(contender, 1_000, 1))  # warm up
        if args.pyinstrument:
            from pyinstrument import Profiler  # noqa: PLC0415 - optional tool

            profiler = Profiler(interval=0.0001, async_mode="disabled")
            profiler.start()
            loop.run_until_complete(timed(contender, args.calls, 1))
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        else:
            profile = cProfile.Profile()
            profile.enable()
            seconds = loop.run_until_complete(timed(contender, args.calls, 1))
            profile.disable()
            print(f"{args.calls} calls, {seconds / args.calls * 1e6:.1f} us/call under cProfile")
            stats = pstats.Stats(profile).strip_dirs().sort_stats("tottime")
            stats.print_stats(args.top)
        loop.run_until_complete(contender.close())
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
