"""A real PostgreSQL server for tests: a throw-away cluster in a temporary folder.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as an
unprivileged system user (created when missing) through ``runuser``. It listens on
127.0.0.1 only, on a free port, with trust authentication for the local test user. When the
server binaries are absent the tests that need it are skipped, saying why.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

SERVER_USER = "fairsqueeze-pg"
DB_USER = "fairsqueeze"


def server_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").exists()]
    found = [p for p in found if (p / "pg_ctl").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                       check=True, capture_output=True)
    return ["runuser", "-u", SERVER_USER, "--", *args]


class PostgresServer:
    """Start with :meth:`start`, stop with :meth:`stop`; :meth:`new_database` gives a fresh URL."""

    def __init__(self, binaries: Path, max_connections: int = 100):
        self.bin = binaries
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="fairsqueeze-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()

    def _run(self, *args: str) -> None:
        result = subprocess.run(_as_server_user(list(args)), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr or result.stdout}")

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            _as_server_user(["true"])  # creates the user when missing
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections={self.max_connections}"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={DB_USER} dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.new_database()
