# Multi-model failover: developer commands. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python3")

# The scripted incident on simulated models, then its timeline, states and metrics.
demo log="var/demo/events.sqlite3":
    failover demo --log {{log}}

# Lint, then every fast test with coverage (gate: 90% of the package's lines).
test *args: lint
    {{python}} -m pytest -m "not slow" --cov --cov-report=term {{args}}

# Every test, the slow reliability ones included (CI runs this).
test-all *args: lint
    {{python}} -m pytest --cov --cov-report=term {{args}}

# ruff (lint and format) and mypy --strict on src/.
lint:
    {{python}} -m ruff check src tests benchmarks
    {{python}} -m ruff format --check src tests benchmarks
    {{python}} -m mypy --strict src

# Format the code in place.
fmt:
    {{python}} -m ruff format src tests benchmarks
    {{python}} -m ruff check --fix src tests benchmarks

# Run the seed tests into a log file and check from the log that failover happened.
verify:
    bash scripts/verify_multi_model_failover.sh

# Benchmarks: per-call overhead against a hand-written floor, log throughput.
bench *args:
    {{python}} benchmarks/run.py {{args}}
    {{python}} benchmarks/cli_bench.py
