# Multi-model failover: developer commands. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python3")

# The scripted incident on simulated models, then its timeline, states and metrics.
demo log="var/demo/events.sqlite3":
    failover demo --log {{log}}

# Lint, then every fast test with coverage (gate: 90% of the package's lines), one worker per
# core (pytest-xdist: most tests wait on timers, sockets and subprocesses; `-n 0` runs them
# in this process).
test *args: lint
    {{python}} -m pytest -m "not slow" -n auto --cov --cov-report=term {{args}}

# Every test, the slow reliability ones included.
test-all *args: lint
    {{python}} -m pytest -n auto --cov --cov-report=term {{args}}

# Each version: pyenv's interpreter, else pythonX.Y on PATH; its venv is var/venvs/pyX.Y.Z.
# The fast suite on the other CPythons we support (`just test` runs python3), skipping absent ones.
# Its command-line tests (text rendering over the same store code) run on python3 only: CI's
# 15 minutes cannot hold them three times.
test-pythons versions="3.12 3.13":
    #!/usr/bin/env bash
    set -euo pipefail
    failed=""
    for version in {{versions}}; do
        python=""
        for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python 2>/dev/null | sort -V -r) \
            "$(command -v "python$version" || true)"; do
            found=$("$candidate" -c 'import sys; print(sys.implementation.name, "%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
            if [ "$found" = "cpython $version" ]; then python=$candidate; break; fi
        done
        if [ -z "$python" ]; then
            echo "test-pythons: no CPython $version on this machine; skipped"
            continue
        fi
        full=$("$python" -c 'import platform; print(platform.python_version())')
        venv="var/venvs/py$full"
        [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q -e '.[dev]'
        echo "test-pythons: the fast suite on CPython $full ($python)"
        "$venv/bin/python" -m pytest -m "not slow" -n auto -q -p no:cacheprovider --ignore=tests/cli \
            || failed="$failed $full"
    done
    if [ -n "$failed" ]; then echo "test-pythons: failed on CPython$failed"; exit 1; fi

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

# Benchmarks into docs/performance.md: per-call overhead against a hand-written floor, log
# throughput, memory, engine start/replay/archive on logs up to 10M events, the command line on
# the largest (whole and half archived). `just bench --fast`: smaller logs; `--help`: options.
bench *args:
    {{python}} benchmarks/run.py {{args}}
