"""A throwaway PostgreSQL cluster for tests: initdb into a temp folder, start, stop, delete.

The server listens on a free port of 127.0.0.1 only, with its unix socket in the temp folder.
Under root (here and in CI) the server commands run as the ``postgres`` user (PostgreSQL
refuses to run as root), in a folder that user owns.

Tests take it through the ``pg_cluster`` (session) and ``pg_url`` (a new, empty database)
fixtures of ``tests/conftest.py``. Other code (the benchmarks) imports this module.
``start_cluster()`` starts a private one instead; ``Cluster.stop``/``start`` stop and
restart a server under a running test, on the same port and data. ``ClusterUnavailable`` says
why no server could run (no binaries, no psycopg, no ``postgres`` user, a start that failed):
tests skip with that reason.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SUPERUSER: Final = "postgres"
_START_TIMEOUT: Final = 60
_HBA: Final = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server can run here; the message says why."""


def find_bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian install."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(installed):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise ClusterUnavailable(
        "PostgreSQL server binaries not found (no initdb/pg_ctl on PATH or in "
        "/usr/lib/postgresql/*/bin): install Debian's postgresql package"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway server; ``url`` reaches its ``postgres`` database as superuser."""

    folder: Path
    bin_dir: Path
    port: int
    run_as: str | None  # the user the server commands run as (None: ourselves)
    durable: bool = False  # fsync as a production server does (for benchmarks)
    _databases: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        """The server's own log (read it when a start fails)."""
        return self.folder / "server.log"

    def url_for(self, database: str, user: str = SUPERUSER, password: str | None = None) -> str:
        """A libpq URL to ``database`` on this server over TCP."""
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The superuser's URL to the ``postgres`` database."""
        return self.url_for("postgres")

    def _command(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(  # noqa: S603 - fixed binaries, our own arguments
            command, capture_output=True, text=True, check=False, timeout=_START_TIMEOUT + 30
        )

    def start(self) -> None:
        """Start the server (again) on the same port and data; waits until it accepts."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
        options += "-c max_connections=200"
        if not self.durable:  # a throwaway cluster: tests need not wait on the disk
            options += " -c fsync=off -c full_page_writes=off"
        started = self._command(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", options,
            "-w", "-t", str(_START_TIMEOUT), "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (
                self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            )
            raise ClusterUnavailable(
                f"PostgreSQL would not start: {started.stderr.strip() or started.stdout.strip()}"
                f"\n{log}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients; ``immediate``: as if it crashed)."""
        self._command("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self) -> str:
        """A new, empty database; returns its superuser URL."""
        import psycopg  # noqa: PLC0415 - only once a cluster runs

        with self._lock:
            name = f"test_{next(self._databases)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url_for(name)

    def destroy(self) -> None:
        """Stop the server at once and delete its folder."""
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> Cluster:
    """Create and start a private cluster; ``Cluster.destroy`` removes it (also at exit).

    ``durable=True`` keeps fsync on, as a production server would (for benchmarks); tests run
    without it.
    """
    try:
        import psycopg  # noqa: F401, PLC0415 - the tests need the driver as much as the server
    except ImportError as exc:
        raise ClusterUnavailable(f"psycopg is not installed ({exc})") from exc
    bin_dir = find_bin_dir()
    run_as = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="failover-pg-"))
    if run_as is not None:
        record = pwd.getpwnam(run_as)
        os.chown(folder, record.pw_uid, record.pw_gid)
    cluster = Cluster(
        folder=folder, bin_dir=bin_dir, port=_free_port(), run_as=run_as, durable=durable
    )
    try:
        _initdb(cluster)
        cluster.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    atexit.register(cluster.destroy)
    return cluster


def _server_user() -> str | None:
    """Who runs the server commands: ``postgres`` under root, else ourselves."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise ClusterUnavailable("running as root without runuser: cannot start PostgreSQL")
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterUnavailable(
            "running as root and there is no 'postgres' user to run the server as"
        ) from None
    return SUPERUSER


def _initdb(cluster: Cluster) -> None:
    made = cluster._command(
        "initdb", "-D", str(cluster.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
        "--auth-local=trust", "--auth-host=trust", "--no-sync", "--no-instructions",
    )  # fmt: skip
    if made.returncode != 0:
        raise ClusterUnavailable(f"initdb failed: {made.stderr.strip() or made.stdout.strip()}")
    # Superuser by trust on 127.0.0.1; every other role needs its password (the tests of
    # password handling log in as one).
    (cluster.data / "pg_hba.conf").write_text(_HBA)


_shared: Cluster | ClusterUnavailable | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> Cluster:
    """One cluster for the whole test process, started on first use, removed at exit.

    Raises ``ClusterUnavailable`` when it cannot start (tried once; the reason is kept).
    """
    global _shared  # noqa: PLW0603 - one server per test process, by design
    with _shared_lock:
        if _shared is None:
            try:
                _shared = start_cluster()
            except ClusterUnavailable as exc:
                _shared = exc
        if isinstance(_shared, ClusterUnavailable):
            raise _shared
        return _shared


def fresh_database(cluster: Cluster) -> str:
    """A new empty database on ``cluster``; its superuser URL."""
    return cluster.create_database()


@contextlib.contextmanager
def stopped(cluster: Cluster) -> Iterator[None]:
    """While inside, the server is down (clients disconnected); it starts again on exit."""
    cluster.stop()
    try:
        yield
    finally:
        cluster.start()
