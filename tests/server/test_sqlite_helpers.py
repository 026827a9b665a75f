"""The shared SQLite helpers: WAL + busy timeout on open, all-or-nothing transactions, a connection per thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from core.sqlite import ThreadConnections, connect, transaction


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
