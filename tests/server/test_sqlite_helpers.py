"""The shared SQLite helpers: WAL + busy timeout on open, all-or-nothing transactions, a connection per thread."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.sqlite import ThreadConnections, connect, transaction
from tests.helpers.processes import REPO_ROOT


class Boom(Exception):
    pass


def _fail_inside(db: sqlite3.Connection, *statements: str) -> None:
    with transaction(db) as tx:
        for statement in statements:
            tx.execute(statement)
        raise Boom


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_connect_opens_wal_with_the_requested_durability_and_busy_timeout(tmp_path: Path, synchronous: str) -> None:
    db = connect(tmp_path / "x.sqlite3", timeout=7.5, synchronous=synchronous)  # type: ignore[arg-type]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == {"FULL": 2, "NORMAL": 1}[synchronous]
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 7500
    db.close()


def test_transaction_commits_on_success_and_rolls_back_on_error(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.sqlite3", timeout=5, synchronous="FULL")
    db.execute("CREATE TABLE t (v INTEGER)")
    with transaction(db) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(Boom):
        _fail_inside(db, "INSERT INTO t VALUES (2)")
    assert [v for (v,) in db.execute("SELECT v FROM t")] == [1]
    assert not db.in_transaction
    db.close()


def test_transaction_reports_the_original_error_when_sqlite_already_ended_it(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.sqlite3", timeout=5, synchronous="FULL")
    with pytest.raises(Boom):
        _fail_inside(db, "ROLLBACK")  # what SQLite does by itself on e.g. a full disk
    db.close()


def test_thread_connections_give_each_thread_its_own_connection(tmp_path: Path) -> None:
    connections = ThreadConnections(tmp_path / "x.sqlite3", timeout=5, synchronous="NORMAL")
    mine = connections.get()
    assert connections.get() is mine
    theirs: list[sqlite3.Connection] = []
    worker = threading.Thread(target=lambda: theirs.append(connections.get()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine
    connections.close()
    assert connections.get() is not mine
    connections.close()


def _open_and_create_schema(
    path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:
    barrier.wait()
    try:
        db = connect(Path(path), timeout=10, synchronous="FULL")
        db.executescript("CREATE TABLE IF NOT EXISTS a (x); CREATE INDEX IF NOT EXISTS ax ON a (x);")
        with transaction(db):
            db.execute("INSERT INTO a VALUES (?)", (os.getpid(),))
        db.close()
        results.put("ok")
    except sqlite3.Error as err:
        results.put(f"{type(err).__name__}: {err}")


def open_fresh_databases_concurrently(directory: str, processes: int = 6, rounds: int = 40) -> list[str]:
    """Each round, ``processes`` forked children open one fresh database at the same instant."""
    context = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for round_ in range(rounds):
        path = Path(directory) / f"fresh-{round_}.sqlite3"
        barrier = context.Barrier(processes)
        results = context.Queue()
        workers = [
            context.Process(target=_open_and_create_schema, args=(str(path), barrier, results))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        outcomes += [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(10)
    return outcomes


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path):
    """gunicorn workers boot together; one failing to switch the new file to WAL would stop the server.

    Without the retry, SQLite failed about 1 in 8 such opens here ("database is locked" on
    ``PRAGMA journal_mode=WAL``). The forks happen in a fresh interpreter:
    forking this test process, whose other threads may hold locks, could deadlock the children.
    """
    script = (
        "import json, sys; from tests.server.test_sqlite_helpers import open_fresh_databases_concurrently as run; "
        "print(json.dumps(run(sys.argv[1])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout.splitlines()[-1])

    assert len(outcomes) == 6 * 40
    assert [o for o in outcomes if o != "ok"] == []
    for path in sorted(tmp_path.glob("fresh-*.sqlite3")):
        db = connect(path, timeout=10, synchronous="FULL")
        assert db.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 6
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
