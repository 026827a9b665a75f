"""A real PostgreSQL (Debian's) owned by the test session: initdb as ``nobody`` in a temp dir, 127.0.0.1 only.

``PostgresServer`` runs ``initdb -A trust`` and ``pg_ctl start`` on a free port with its socket in
its own directory, waits until it answers, and stops with ``pg_ctl stop -m fast``. Tests get a fresh
database each (``create_database``), so they never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from tests.helpers.processes import free_port, wait_until

USER = "nobody"  # initdb refuses to run as root


def bin_dir() -> Path | None:
    """Where Debian installed the server programs (newest major version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def postgres_available() -> bool:
    return bin_dir() is not None


class PostgresServer:
    """``with PostgresServer() as pg: pg.create_database()`` — an empty cluster that dies with the session."""

    def __init__(self, *, durable: bool = False) -> None:
        programs = bin_dir()
        if programs is None:
            msg = "PostgreSQL is not installed: run scripts/install-system-deps.sh"
            raise RuntimeError(msg)
        self.programs = programs
        self.port = free_port()
        # Not under pytest's 0700 tmp dirs: the server runs as nobody and must reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        self.data = self.root / "data"
        # Tests skip fsync (a crash of the test machine loses nothing of value); benchmarks keep it.
        self.durable = durable

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as_user(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, user=USER, timeout=120)

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def start(self, timeout: float = 60.0) -> PostgresServer:
        account = pwd.getpwnam(USER)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run_as_user(str(self.programs / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off"
        log = self.root / "postgres.log"
        self._run_as_user(str(self.programs / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(log), "start")
        try:
            wait_until(self.answers, timeout, 0.1, f"PostgreSQL on port {self.port}")
        except TimeoutError:
            text = log.read_text() if log.exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start; log:\n{text}") from None
        return self

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy-ready URL (``postgresql://…``, what STATE_STORE_URI takes)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run_as_user(str(self.programs / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
