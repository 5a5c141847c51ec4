"""The public surface: ``__all__`` is complete and importable, the library is quiet by default,
and a consumer's code type-checks under ``mypy --strict``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import devs.risks.multi_model_failover as package

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / "tests" / "typing" / "consumer.py"

# Every name DESIGN.md's public API section lists.
DESIGN_NAMES = {
    "ModelClient", "MultiModelFailover", "replay", "SQLiteEventStore", "ConfigError",
    "ModelError", "AllModelsFailedError", "ErrorKind", "HealthState", "RetryPolicy",
    "HealthPolicy", "Metrics", "ModelResponse", "Snapshot", "DeadlineExceededError",
}  # fmt: skip


def test_every_design_name_is_exported() -> None:
    assert set(package.__all__) >= DESIGN_NAMES


def test_every_entry_of_all_is_importable() -> None:
    fresh = importlib.import_module("devs.risks.multi_model_failover")
    for name in package.__all__:
        assert getattr(fresh, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from devs.risks.multi_model_failover import *", namespace)  # noqa: S102
    assert set(package.__all__) <= set(namespace)


def test_all_is_complete_and_has_no_duplicates() -> None:
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(package.__all__)
    assert len(package.__all__) == len(set(package.__all__))


def test_public_names_have_docstrings() -> None:
    missing = [name for name in package.__all__ if not getattr(package, name).__doc__]
    assert missing == []


def test_the_error_tree_matches_the_design() -> None:
    assert issubclass(package.AllModelsFailedError, package.ModelError)
    assert issubclass(package.DeadlineExceededError, package.AllModelsFailedError)
    assert issubclass(package.DeadlineExceededError, TimeoutError)
    assert issubclass(package.ConfigError, ValueError)
    assert issubclass(package.ModelError, Exception)


QUIET_SCRIPT = """
import anyio
from devs.risks.multi_model_failover import ModelError, MultiModelFailover

class Down:
    model_id = "primary"
    async def call(self, prompt):
        raise ModelError("down", kind="server")
    async def health_check(self):
        return False

class Up:
    model_id = "secondary"
    async def call(self, prompt):
        return "ok"
    async def health_check(self):
        return True

async def main():
    fo = MultiModelFailover([Down(), Up()], {"max_attempts": 1})
    assert await fo.call("hi") == "ok"
    await fo.check_health()
    await fo.set_maintenance("secondary", True, reason="quiet?")
    await fo.aclose()
    print("done")

anyio.run(main)
"""


def test_the_library_is_silent_until_the_application_enables_logging() -> None:
    # A fresh interpreter: loguru's default stderr handler is installed there.
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", QUIET_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr == ""


def test_a_consumer_type_checks_under_mypy_strict() -> None:
    # About a second with a warm cache, a few without: cheap enough for every run.
    result = subprocess.run(  # noqa: S603 - our own interpreter, tool and file
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(CONSUMER)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
