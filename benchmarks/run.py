"""`just bench`: the engine's per-call overhead next to its peers, the log's throughput, memory,
and what a log costs as it grows (engine start, replay, archive, disk, the command line).

Runs everything in one process and writes ``docs/performance.md``. ``--help`` lists the options;
pyperf's own (``--values``, ``--min-time``, ``--processes``...) pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pickle
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
if str(BENCHMARKS) not in sys.path:  # pragma: no cover - run as a script, this is already so
    sys.path.insert(0, str(BENCHMARKS))

try:
    import pyperf
    import tenacity  # noqa: F401 - checked here so a missing extra fails with one clear line
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise SystemExit(f"{exc.name} is missing: pip install -e '.[bench]'") from exc
import cli_bench  # noqa: E402
import log_scale  # noqa: E402
import report as reporting  # noqa: E402
from contenders import (  # noqa: E402
    ENGINE_MODES,
    FLOOR,
    LITELLM,
    NULL_LOG,
    TENACITY,
    litellm_unavailable,
)
from fakes import HAPPY, SCENARIOS  # noqa: E402
from overhead import Case, Harness  # noqa: E402
from throughput import (  # noqa: E402
    in_flight_memory,
    replay_benchmarks,
    sustained_appends,
    write_log,
)

PARTS = ("overhead", "log", "postgres", "memory", "scale", "cli")
# Every run's results, kept so that `--render` can write the report again without measuring.
SAVED = ROOT / "var" / "bench" / "last-run.pickle"


def make_runner() -> pyperf.Runner:
    """A pyperf runner, in-process, with this benchmark's own options added."""
    runner = pyperf.Runner(values=3, processes=1, warmups=1, min_time=0.05)
    add = runner.argparser.add_argument
    add("--long", action="store_true", help="60 s of appends and a 1,000,000-event replay")
    add("--rounds", type=int, default=3, help="interleaved rounds per case (default 3)")
    add(
        "--peers",
        default="auto",
        help="extra peers, comma-separated: litellm, or none; auto (default): litellm when it "
        "is installed (tenacity and the floor always run)",
    )
    add("--parts", default=",".join(PARTS), help=f"what to run (default {','.join(PARTS)})")
    add("--concurrency", default="100,1000", help="concurrent-call levels (default 100,1000)")
    add("--append-seconds", type=float, default=None, help="sustained append time (10; long 60)")
    add("--replay-events", type=int, default=None, help="events to replay (200000; long 1000000)")
    add("--in-flight", type=int, default=10_000, help="calls held in flight for memory")
    add(
        "--log-sizes",
        default=None,
        help="log sizes for engine start and replay (default 10k,1M,10M; --fast: 10k,100k,1M); "
        "the command line is timed on the largest",
    )
    add(
        "--log-dir",
        type=Path,
        default=None,
        help="keep the big logs here and reuse them in later runs (default: a temporary folder)",
    )
    add("--log-repeats", type=int, default=5, help="engine starts and replays per log size")
    add(
        "--archive-repeats",
        type=int,
        default=None,
        help="archives of half the 1M-event log (default 3; --fast: 1)",
    )
    add(
        "--hot-path-calls",
        type=int,
        default=None,
        help="engine calls whose log is measured for bytes per event (100000; --fast: 20000)",
    )
    add("--doc", type=Path, default=ROOT / "docs" / "performance.md", help="report to write")
    add("--no-doc", action="store_true", help="print only; do not write the report")
    add(
        "--render",
        action="store_true",
        help=f"measure nothing: write the report from the last run's results ({SAVED}), "
        "e.g. after editing report.py",
    )
    add("--json", type=Path, default=None, help="also save the pyperf results (a JSON suite)")
    runner.parse_args([*sys.argv[1:], "--in-process", "--quiet"])
    return runner


def plan(peers: set[str], concurrency: list[int]) -> list[Case]:
    """Every case: each scenario for each contender, then the concurrent levels."""
    contenders = [FLOOR, TENACITY, *ENGINE_MODES]
    cases = [Case(s, c) for s in SCENARIOS for c in [*contenders, NULL_LOG]]
    if LITELLM in peers:
        cases += [Case(s, LITELLM) for s in SCENARIOS if s.name in ("success", "failover")]
    cases += [Case(HAPPY, c, n) for n in concurrency for c in contenders]
    return cases


def run_overhead(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    args = runner.args
    peers = {p.strip() for p in args.peers.split(",") if p.strip()} - {"none"}
    unknown = peers - {LITELLM, TENACITY, "auto"}
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(sorted(unknown))} (known: litellm)")
    if peers & {"auto", LITELLM}:
        reason = litellm_unavailable()
        if reason is None:
            peers.add(LITELLM)
        else:
            print(f"skipping LiteLLM: {reason}", file=sys.stderr)
            report.skipped.append(f"LiteLLM Router: {reason}")
            peers.discard(LITELLM)
    concurrency = [int(n) for n in args.concurrency.split(",") if n.strip()]
    cases = plan(peers, concurrency)
    print(f"per-call overhead: {len(cases)} cases x {args.rounds} rounds", file=sys.stderr)
    loop = asyncio.new_event_loop()
    try:
        harness = Harness(runner, loop, workdir, rounds=args.rounds)
        report.overhead = harness.run(cases)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_log(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    args = runner.args
    seconds = args.append_seconds or (60.0 if args.long else 10.0)
    events = args.replay_events or (1_000_000 if args.long else 200_000)
    print(f"sustained appends for {seconds:g} s", file=sys.stderr)
    report.append_seconds = seconds
    report.appends = sustained_appends(workdir / "appends.sqlite3", seconds)
    print(f"replay of {events:,} events", file=sys.stderr)
    path = workdir / "replay.sqlite3"
    written = write_log(path, events)
    with contextlib.redirect_stdout(io.StringIO()):
        report.replay = replay_benchmarks(runner, path, written)


def run_postgres(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    """The same append and replay figures on PostgreSQL, beside SQLite's."""
    args = runner.args
    # A throwaway local cluster, started and stopped as the tests do (tests/storage/pg_server).
    sys.path.insert(0, str(ROOT / "tests"))
    from storage.pg_server import ClusterUnavailable, start_cluster  # noqa: PLC0415

    try:
        cluster = start_cluster(durable=True)  # fsync on, as a production server
    except ClusterUnavailable as exc:
        print(f"skipping PostgreSQL: {exc}", file=sys.stderr)
        report.skipped.append(f"PostgreSQL: {exc}")
        return
    try:
        seconds = args.append_seconds or (60.0 if args.long else 10.0)
        events = args.replay_events or (1_000_000 if args.long else 200_000)
        print(f"PostgreSQL: sustained appends for {seconds:g} s", file=sys.stderr)
        report.pg_appends = sustained_appends(cluster.create_database(), seconds)
        print(f"PostgreSQL: replay of {events:,} events", file=sys.stderr)
        source = cluster.create_database()
        written = write_log(source, events)
        with contextlib.redirect_stdout(io.StringIO()):
            report.pg_replay = replay_benchmarks(runner, source, written, label="postgres-")
    finally:
        cluster.destroy()


def run_memory(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    n = runner.args.in_flight
    print(f"memory of {n:,} calls in flight", file=sys.stderr)
    report.in_flight = n
    report.memory = in_flight_memory(workdir, n)


_CACHES: dict[Path, log_scale.LogCache] = {}


def log_cache(runner: pyperf.Runner, workdir: Path) -> log_scale.LogCache:
    """The big logs of this run (built once, shared by the scale and cli parts)."""
    folder = runner.args.log_dir or workdir / "logs"
    if folder not in _CACHES:
        _CACHES[folder] = log_scale.LogCache(folder)
    return _CACHES[folder]


def log_sizes(runner: pyperf.Runner) -> tuple[int, ...]:
    args = runner.args
    default = log_scale.FAST_SIZES if args.fast else log_scale.SIZES
    if args.log_sizes is None:
        return default
    return log_scale.parse_sizes(args.log_sizes)


def run_scale(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    """Engine start, replay, bytes per event and archive on logs of each size."""
    args = runner.args
    sizes = log_sizes(runner)
    # Archive half of the 1M-event log (or of the largest one below it).
    archived = max([n for n in sizes if n <= 1_000_000] or [min(sizes)])
    repeats = args.archive_repeats if args.archive_repeats is not None else (1 if args.fast else 3)
    calls = args.hot_path_calls or (20_000 if args.fast else 100_000)
    print(f"log scale: {', '.join(map(log_scale.size_label, sizes))} events", file=sys.stderr)
    report.scale = log_scale.measure(
        log_cache(runner, workdir),
        sizes,
        runs=args.log_repeats,
        archive_events=archived,
        archive_repeats=repeats,
        hot_path_calls=calls,
    )


def run_cli(runner: pyperf.Runner, report: reporting.Report, workdir: Path) -> None:
    """The command line on the largest log, whole and half archived, side by side."""
    events = max(log_sizes(runner))
    cache = log_cache(runner, workdir)
    log = cache.log(events)
    print(f"command line on {events:,} events, whole and half archived", file=sys.stderr)
    start_load = log_scale.load_average()
    archived, archive, figures = cache.archived(events)
    report.cli_archive = figures
    report.cli_events = events
    report.cli = cli_bench.compare(log, archived, archive, workdir)
    report.cli_load = (start_load, log_scale.load_average())


def save_json(report: reporting.Report, path: Path) -> None:
    benches = [r.bench for r in report.overhead]
    if report.replay is not None:
        benches += [report.replay["replay"], report.replay["fold"]]
    if benches:
        pyperf.BenchmarkSuite(benches).dump(str(path), replace=True)


def render_saved(doc: Path) -> int:
    """Write ``doc`` from the results the last complete run saved."""
    if not SAVED.is_file():
        raise SystemExit(f"no saved results at {SAVED}: run `just bench` first")
    with SAVED.open("rb") as saved:
        report = pickle.load(saved)  # noqa: S301 - our own file, written by this script
    reporting.write(report, doc)
    print(f"wrote {doc} from {SAVED} (measured {report.started:%Y-%m-%d %H:%M} UTC)")
    return 0


def main() -> int:
    runner = make_runner()
    args = runner.args
    if args.render:
        return render_saved(args.doc)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s): {', '.join(sorted(unknown))} (known: {PARTS})")
    argv = " ".join(["just bench", shlex.join(sys.argv[1:])]).strip()
    report = reporting.Report(argv=argv, started=datetime.now(UTC))
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        workdir = Path(tmp)
        steps = {
            "overhead": run_overhead,
            "log": run_log,
            "postgres": run_postgres,
            "memory": run_memory,
            "scale": run_scale,
            "cli": run_cli,
        }
        for part in parts:
            steps[part](runner, report, workdir)
    report.seconds = time.perf_counter() - started
    report.load = (load_at_start, os.getloadavg()[0])
    print(reporting.console(report))
    if args.json is not None:
        save_json(report, args.json)
    if args.no_doc:
        return 0
    if set(parts) != set(PARTS):
        print(f"not writing {args.doc}: only part of the benchmark ran", file=sys.stderr)
        return 0
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    with SAVED.open("wb") as saved:
        pickle.dump(report, saved)
    reporting.write(report, args.doc)
    print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
