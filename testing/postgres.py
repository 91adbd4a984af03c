"""A real, throw-away PostgreSQL server for the tests (Debian's ``postgresql`` package):
``initdb`` into a temporary folder, ``pg_ctl start`` on 127.0.0.1 and a free port, a fresh
database per test (:meth:`PostgresServer.new_database`), stopped and removed at the end.

PostgreSQL refuses to run as root: as root, the server's commands run as the ``postgres``
user the package creates (``runuser``), in a folder it owns.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
SUPERUSER = "triage"
START_TIMEOUT_S = 60


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (with initdb and pg_ctl), else None."""
    for folder in POSTGRES_BIN_DIRS:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def why_not_available() -> str | None:
    """Why no server can be started here (None: it can)."""
    if postgres_bin() is None:
        return (
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; Debian: postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to start the server as `postgres`"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    folder: Path
    port: int
    bin_dir: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # a name of ours, not input
        return self.url(name)


def _run_as_server_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server (see the module's docstring); stop and remove it on exit."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, why_not_available()
    folder = Path(tempfile.mkdtemp(prefix="worklist-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"
    port = _free_port()
    server = PostgresServer(folder, port, bin_dir)
    try:
        done = _run_as_server_user(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E",
             "UTF8", "--no-sync"]
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -k {folder} -c fsync=off "
            "-c max_connections=50"
        )
        done = _run_as_server_user(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
             str(folder / "server.log"), "-w", "-t", str(START_TIMEOUT_S), "start"]
        )  # fmt: skip
        if done.returncode != 0:
            log = (folder / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-1000:]}\n{log}")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            _run_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
