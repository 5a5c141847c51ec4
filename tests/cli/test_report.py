"""`failover report`: a self-contained HTML page, checked in a real headless browser."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import Result

from devs.risks.multi_model_failover import SQLiteEventStore
from devs.risks.multi_model_failover.core.events import CallFailed, Failover, Maintenance

Run = Callable[..., Result]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed once with apt-get when absent, else the test is skipped."""
    found = _find_chromium()
    if found:
        return found
    try:
        install = subprocess.run(
            ["apt-get", "install", "-y", "chromium"],  # noqa: S607 - the system package manager
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        why = install.stderr.strip().splitlines()[-1:] or [f"exit code {install.returncode}"]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = [str(exc)]
    found = _find_chromium()
    if not found:
        pytest.skip(
            f"no chromium to render the report: `apt-get install -y chromium` failed: {why[0]}"
        )
    return found


def browse(
    chromium: str, page: Path, profile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the browser found above, on our own file
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


class ClassCounter(HTMLParser):
    """Counts elements by class, and the models of the band groups."""

    def __init__(self) -> None:
        super().__init__()
        self.classes: Counter[str] = Counter()
        self.bands: list[str] = []
        self.in_svg = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in (found.get("class") or "").split():
            self.classes[f"{tag}.{name}"] += 1
        if tag == "g" and found.get("class") == "band":
            self.bands.append(found.get("data-model") or "")


@pytest.fixture
def report(run_cli: Run, incident_log: Path, tmp_path: Path) -> Path:
    page = tmp_path / "incident.html"
    result = run_cli("report", incident_log, "-o", page)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {page}" in result.stdout
    return page


def test_the_page_is_self_contained(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None
    assert "<script" not in html
    assert "<link" not in html
    assert "@import" not in html
    assert "url(" not in html
    assert "<svg" in html


@pytest.mark.timeout(900)  # the first use may install chromium
def test_the_browser_draws_a_band_per_model_and_a_mark_per_failover(
    chromium: str, report: Path, incident_log: Path, tmp_path: Path
) -> None:
    with SQLiteEventStore(incident_log, create=False) as store:
        events = list(store.read())
    failovers = [e for e in events if isinstance(e, Failover)]
    maintenance = [e for e in events if isinstance(e, Maintenance)]
    failed = [e for e in events if isinstance(e, CallFailed)]

    dom = browse(chromium, report, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    counter = ClassCounter()
    counter.feed(dom.stdout)
    assert counter.bands == ["primary", "secondary", "tertiary"]
    assert counter.classes["path.failover-mark"] == len(failovers) >= 3
    assert counter.classes["path.maintenance-mark"] == len(maintenance) == 2
    assert counter.classes["rect.state-unhealthy"] >= 2  # primary, then secondary
    assert counter.classes["rect.state-maintenance"] == 1
    assert failed[0].call_id in dom.stdout  # the failed calls table

    shot = tmp_path / "incident.png"
    picture = browse(
        chromium, report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,1000"
    )
    assert picture.returncode == 0, picture.stderr[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1400, 1000)
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one


def test_a_window_of_the_log(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    page = tmp_path / "window.html"
    result = run_cli(
        "report", incident_log, "-o", page, "--since", "2024-05-01T03:01:30Z", "--until",
        "2024-05-01T03:02:30Z",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    counter = ClassCounter()
    counter.feed(page.read_text(encoding="utf-8"))
    assert counter.bands == ["primary", "secondary", "tertiary"]
    # The primary went down before the window: its band starts unhealthy.
    assert "unhealthy: 2024-05-01 03:01:30.000" in page.read_text(encoding="utf-8")


def test_an_empty_window(run_cli: Run, incident_log: Path, tmp_path: Path) -> None:
    page = tmp_path / "empty.html"
    result = run_cli("report", incident_log, "-o", page, "--since", "2030-01-01")
    assert result.exit_code == 0
    assert "no events in that window" in result.stdout
    assert "<svg" in page.read_text(encoding="utf-8")
