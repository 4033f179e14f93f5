"""A real PostgreSQL server for the tests, private to the run.

Debian's ``postgresql`` binaries (``.ci/run`` installs them): ``initdb`` into
a temporary directory, ``pg_ctl start`` on a free loopback port, stopped
after. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user Debian's package creates. Skips, with the reason, only
when the server truly cannot start.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

PASSWORD = "not-a-real-s3cret"  # trust auth ignores it: here to prove it never leaks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("pg_ctl")
    return Path(exe).parent if exe else None


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.fsync = fsync  # off for tests: a clean stop still keeps every commit
        self.root = Path(tempfile.mkdtemp(prefix="tally-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root and no runuser to drop to 'postgres'")
            shutil.chown(self.root, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb", "-D", str(self.data), "-U", "tally", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://tally:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stderr.strip()[-500:]}")

    def start(self) -> None:
        fsync = "on" if self.fsync else "off"
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync={fsync} -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "30", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_db(self) -> str:
        """A fresh database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def postgres_or_skip() -> PostgresServer:
    """A started server, or a skip saying why it cannot start."""
    pytest.importorskip("psycopg", reason="psycopg missing: pip install 'tally-router[postgres]'")
    try:
        server = PostgresServer()
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL cannot start ({exc}): .ci/run installs it")
        pytest.skip(f"PostgreSQL cannot start: {exc}")
    return server
