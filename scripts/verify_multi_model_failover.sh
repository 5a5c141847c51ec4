#!/usr/bin/env bash
# Run the seed tests with their events written to a fresh SQLite log, then check from that log
# (not from the test output) that a failover really happened. Exits non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

# Each seed test writes its own log file in $log_dir (see the event_log fixture).
MULTI_MODEL_FAILOVER_TEST_LOG="$log_dir" python3 -m pytest -q -p no:cacheprovider \
    tests/test_multi_model_failover.py

shopt -s nullglob
logs=("$log_dir"/*.sqlite3)
if (( ${#logs[@]} == 0 )); then
    echo "verify: the seed tests wrote no event log in $log_dir" >&2
    exit 1
fi
failover verify "${logs[@]}" --expect failover --expect call_succeeded
