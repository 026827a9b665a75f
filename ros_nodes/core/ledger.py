"""A small SQLite ledger of which files were handed to the uploader, so each is queued exactly once.

The uploader journals its own queue; this ledger answers the robot-side
questions it cannot: "did I already queue this split before I was killed?" and
"is every file of this bag verified on the server, so it may be deleted?".
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.sqlite import connect, transaction

CLAIMED = "claimed"  # about to be queued; a crash here is retried on restart
QUEUED = "queued"
VERIFIED = "verified"
FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handoff (
    file TEXT PRIMARY KEY,
    bag TEXT NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS handoff_job ON handoff (job_id);
CREATE INDEX IF NOT EXISTS handoff_bag ON handoff (bag);
"""


@dataclass(frozen=True)
class Entry:
    file: str
    bag: str
    job_id: str | None
    state: str
    size: int


class Ledger:
    """Thread-safe; one connection guarded by a lock (writes are rare: one row per file)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        # 5 s: the sqlite3 module's default busy timeout, which this ledger has always used.
        self._db = connect(path, timeout=5.0, synchronous="FULL", check_same_thread=False)
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    def claim(self, file: Path, bag: str, size: int) -> bool:
        """Reserve ``file`` for queuing; False when it was already queued (or verified) before."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM handoff WHERE file = ?", (str(file),)).fetchone()
            if row is not None and row[0] != CLAIMED:
                return False
            db.execute(
                "INSERT OR REPLACE INTO handoff (file, bag, job_id, state, size, updated_at)"
                " VALUES (?, ?, NULL, ?, ?, ?)",
                (str(file), bag, CLAIMED, size, self._clock()),
            )
            return True

    def queued(self, file: Path, job_id: str) -> None:
        self._set(file, QUEUED, job_id)

    def _set(self, file: Path, state: str, job_id: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE handoff SET state = ?, job_id = COALESCE(?, job_id), updated_at = ? WHERE file = ?",
                (state, job_id, self._clock(), str(file)),
            )

    def mark_job(self, job_id: str, state: str) -> str | None:
        """Record the uploader's verdict on a job; returns the file it belongs to (None: not ours)."""
        with self._tx() as db:
            row = db.execute("SELECT file FROM handoff WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE handoff SET state = ?, updated_at = ? WHERE job_id = ?", (state, self._clock(), job_id))
            return str(row[0])

    def entries(self, state: str | None = None) -> list[Entry]:
        query = "SELECT file, bag, job_id, state, size FROM handoff"
        args: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            args = (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid", args).fetchall()
        return [Entry(*row) for row in rows]

    def known(self, file: Path) -> bool:
        with self._lock:
            row = self._db.execute("SELECT state FROM handoff WHERE file = ?", (str(file),)).fetchone()
        return row is not None and row[0] != CLAIMED

    def bag_verified(self, bag: str) -> bool:
        """True when the bag has files in the ledger and every one is verified by the server."""
        with self._lock:
            rows = self._db.execute("SELECT state FROM handoff WHERE bag = ?", (bag,)).fetchall()
        return bool(rows) and all(state == VERIFIED for (state,) in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
