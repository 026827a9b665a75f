"""Opening SQLite databases the one way this project trusts them: WAL, a busy timeout, explicit transactions."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["FULL", "NORMAL"]


def connect(
    path: Path, *, timeout: float, synchronous: Synchronous, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A WAL connection in autocommit mode, so that ``transaction()`` alone decides where a write begins and ends.

    ``timeout`` is also SQLite's busy timeout: how long a writer waits for another
    process's write lock before ``database is locked``. ``synchronous="FULL"`` is
    for rows that were acknowledged to someone and must survive power loss.
    """
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    enable_wal(conn, timeout)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the database file to WAL, retrying within ``timeout`` while another process holds it.

    Switching takes an exclusive lock, and SQLite reports ``database is locked`` for it at once
    instead of waiting in its busy handler. gunicorn workers boot together and open the same fresh
    database: measured here, 32 of 240 such concurrent opens failed, and a worker that fails to boot
    takes the whole server down. WAL is persistent in the file, so once any process has set it
    there is nothing left to do.
    """
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        else:
            return


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction; IMMEDIATE takes the write lock up front so read-then-write cannot race.

    The rollback is skipped when SQLite has already ended the transaction itself
    (e.g. on a full disk), so the caller sees the error that caused it.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class ThreadConnections:
    """One connection per thread and process: a connection must not cross a fork.

    Gunicorn may import the app (and open a store) before it forks its workers.
    """

    def __init__(self, path: Path, *, timeout: float, synchronous: Synchronous, check_same_thread: bool = True) -> None:
        self.path = path
        self._timeout = timeout
        self._synchronous: Synchronous = synchronous
        self._check_same_thread = check_same_thread
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again in a forked child)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = connect(
                self.path,
                timeout=self._timeout,
                synchronous=self._synchronous,
                check_same_thread=self._check_same_thread,
            )
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection; another thread's closes when that thread ends."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
