"""The two ways in besides the installed script: ``main`` (what the script calls) and
``python -m devs.risks.multi_model_failover.adapters.cli``."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from devs.risks.multi_model_failover.adapters import cli

PACKAGE = "devs.risks.multi_model_failover.adapters.cli"


def test_importing_a_helper_module_does_not_build_the_app() -> None:
    # `cli/__init__` imports `commands` (typer and every command) only when `main` runs.
    probe = f"import sys, {PACKAGE}.queries; print('typer' in sys.modules)"
    done = subprocess.run(  # noqa: S603 - this Python, our own module
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
    assert cli.__all__ == ["main"]


def test_main_runs_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["failover", "--help"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0
    assert "timeline" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["failover", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(PACKAGE, run_name="__main__")
    assert exited.value.code == 0
    assert "timeline" in capsys.readouterr().out
