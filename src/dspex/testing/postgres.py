"""A private, throwaway PostgreSQL cluster for chaos tests and benchmarks: stop it, crash it, start it again.

Tests that restart PostgreSQL must not touch the machine's shared server, so this module builds a
cluster of their own with the server binaries (``initdb``, ``pg_ctl``) in a temporary directory: trust
authentication, listening on 127.0.0.1 only, its unix socket in that directory, on a free port that stays
the same across restarts (a client's URL stays valid)::

    with PostgresCluster.create() as pg:        # initdb + start; stopped and removed on exit
        url = pg.url                            # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        pg.stop(mode="immediate")               # a crash: no checkpoint, recovery at the next start
        pg.start()

``initdb`` refuses to run as root, so as root every server command runs as the ``postgres`` OS user
(``runuser -u postgres``) in a directory that user owns. :func:`find_bin_dir` looks at ``DSPEX_PG_BIN``,
then ``PATH``, then ``/usr/lib/postgresql/<version>/bin`` (newest first); when nothing is found,
:meth:`PostgresCluster.create` raises ``ConfigurationError`` saying what to install, and tests skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from dspex.errors import ConfigurationError

__all__ = ["PostgresCluster", "StopMode", "find_bin_dir", "unavailable_reason"]

# fast: roll back sessions, checkpoint, exit (a clean restart); immediate: exit at once, the next start
# replays the WAL (a crash, as far as clients and the data directory can tell).
StopMode = Literal["fast", "immediate", "smart"]
_OS_USER = "postgres"
_START_TIMEOUT_S = 30


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL's server is not installed."""
    candidates: list[Path] = []
    if configured := os.environ.get("DSPEX_PG_BIN"):
        candidates.append(Path(configured))
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def unavailable_reason(bin_dir: Path | None = None) -> str | None:
    """Why a private cluster cannot be made on this machine (for ``pytest.skip``), or None when it can."""
    if (bin_dir or find_bin_dir()) is None:
        return (
            "PostgreSQL's server binaries (initdb, pg_ctl) were not found; install postgresql "
            "(apt-get install postgresql) or set DSPEX_PG_BIN to the directory that holds them"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_OS_USER)
        except KeyError:
            return (
                f"initdb refuses to run as root and there is no {_OS_USER!r} OS user to run it as; "
                "run as an unprivileged user or create that user"
            )
        if shutil.which("runuser") is None:
            return "running initdb as the postgres OS user needs runuser (util-linux)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One private cluster: :meth:`create` it, then :meth:`stop` / :meth:`start` it as often as needed.

    ``url`` is a SQLAlchemy URL with the psycopg driver, as ``Settings(database_url=...)`` takes it.
    :meth:`close` (or leaving the ``with`` block) stops the server at once and deletes its directory.
    """

    def __init__(self, bin_dir: Path, root: Path, port: int, *, os_user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log_path = root / "postgres.log"
        self.port = port
        self.os_user = os_user
        self.stops = 0  # how many times it was stopped (for reports)

    @classmethod
    def create(cls, *, bin_dir: Path | None = None, port: int | None = None) -> PostgresCluster:
        """``initdb`` a new cluster in a temporary directory and start it; raises ``ConfigurationError``
        when the server binaries (or, as root, the ``postgres`` OS user) are missing."""
        found = bin_dir or find_bin_dir()
        reason = unavailable_reason(found)
        if found is None or reason is not None:
            raise ConfigurationError(reason or "no PostgreSQL server binaries")
        os_user: str | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(_OS_USER)
            os_user = _OS_USER
        # Not under pytest's tmp_path: as root, that is a 0700 directory the postgres user cannot enter.
        root = Path(tempfile.mkdtemp(prefix="dspex-pg-"))
        if os_user is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        cluster = cls(found, root, port or _free_port(), os_user=os_user)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
            )
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    # -- commands ----------------------------------------------------------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> str:
        command = [str(self.bin_dir / tool), *args]
        if self.os_user is not None:
            command = ["runuser", "-u", self.os_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ConfigurationError(
                f"{tool} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
                f"{self._log_tail()}"
            )
        return done.stdout

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n-- server log --\n" + "\n".join(lines[-20:]) if lines else ""

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (letters, digits, ``_``) in the cluster; returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ConfigurationError(f"database names here are letters, digits and '_', got {name!r}")
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        """True when ``pg_ctl status`` finds the server running."""
        command = [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)]
        if self.os_user is not None:
            command = ["runuser", "-u", self.os_user, "--", *command]
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0

    def start(self) -> float:
        """Start the server on its port and wait until it accepts connections; returns the seconds taken."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c max_connections=200"
        )
        started = time.perf_counter()
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            timeout=_START_TIMEOUT_S + 10,
        )
        return time.perf_counter() - started

    def stop(self, mode: StopMode = "fast") -> float:
        """Stop the server (``fast``: a clean shutdown; ``immediate``: a crash); returns the seconds taken.

        Clients see their connections closed; new ones are refused until :meth:`start`.
        """
        started = time.perf_counter()
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(_START_TIMEOUT_S))
        self.stops += 1
        return time.perf_counter() - started

    def close(self) -> None:
        """Stop the server if it runs (immediately: nothing of it is kept) and delete its directory."""
        try:
            if self.data.exists() and self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
