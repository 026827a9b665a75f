"""The persistent upload queue: one SQLite row per bag, written (and fsynced) before ``add_upload`` returns.

The journal is the queue. A robot that reboots or a client killed with -9
finds every unfinished upload here on the next ``start()``, with the server's
upload id, so it can ask the server which chunks it already has.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from core.sqlite import connect, transaction

JOURNAL_NAME = "journal.sqlite3"


class JobState(str, enum.Enum):
    """Client-side lifecycle of one bag (the server's ``UploadState`` is separate)."""

    QUEUED = "queued"
    HASHING = "hashing"
    INITIALIZING = "initializing"  # asking the server for a new upload (or for the state of a journaled one)
    UPLOADING = "uploading"
    FINALIZING = "finalizing"
    PARKED = "parked"  # retries spent for now; retried after ``next_attempt`` (``blocked`` says why)
    COMPLETE = "complete"  # the server confirmed a verified copy with our sha256
    FAILED = "failed"  # can never succeed for these bytes (too large, name refused); ``error`` says why


ENDED_STATES = frozenset({JobState.COMPLETE, JobState.FAILED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    path TEXT NOT NULL,
    priority INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    md5 TEXT,
    sha256 TEXT,
    compression INTEGER,
    upload_id TEXT,
    chunk_size INTEGER,
    chunks INTEGER,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    parks INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    error TEXT,
    codec TEXT,
    stored_size INTEGER,
    retention TEXT,
    final_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_order ON jobs (state, priority, seq);
"""

# Columns added after the first release: added to an existing journal when it is opened.
_ADDED_COLUMNS = {
    "inode": "INTEGER",
    "blocked": "TEXT",
    "blocked_until": "REAL",
    # 1 from the moment the journal says complete until the retention policy has acted (crash-safe ordering).
    "retention_pending": "INTEGER NOT NULL DEFAULT 0",
}


@dataclass
class JobRecord:
    seq: int
    job_id: str
    path: str
    priority: int
    metadata: dict[str, Any]
    state: JobState
    created: float
    updated: float
    size: int | None = None
    mtime_ns: int | None = None
    md5: str | None = None
    sha256: str | None = None
    compression: bool | None = None
    upload_id: str | None = None
    chunk_size: int | None = None
    chunks: int | None = None
    bytes_sent: int = 0
    attempts: int = 0
    parks: int = 0
    next_attempt: float = 0.0
    error: str | None = None
    codec: str | None = None
    stored_size: int | None = None
    retention: str | None = None
    final_path: str | None = None
    inode: int | None = None
    blocked: str | None = None
    blocked_until: float | None = None
    retention_pending: bool = False

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["metadata"] = json.loads(values["metadata"])
        values["state"] = JobState(values["state"])
        if values["compression"] is not None:
            values["compression"] = bool(values["compression"])
        values["retention_pending"] = bool(values["retention_pending"])
        return cls(**values)

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


_COLUMNS = frozenset(f.name for f in fields(JobRecord)) - {"seq", "job_id"}


class Journal:
    """SQLite in WAL mode with ``synchronous=FULL``: a committed row survives power loss."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / JOURNAL_NAME
        self._lock = threading.Lock()
        self._db = connect(self.path, timeout=30, synchronous="FULL", check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as db:
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    def add(self, path: Path, priority: int, metadata: dict[str, Any] | None) -> tuple[JobRecord, bool]:
        """Journal a bag; an unfinished job for the same path is returned instead (``created`` False)."""
        now = time.time()
        encoded = json.dumps(metadata or {}, sort_keys=True)
        ended = [s.value for s in ENDED_STATES]
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE path = ? AND state NOT IN (?, ?) ORDER BY seq LIMIT 1", (str(path), *ended)
            ).fetchone()
            if row is not None:
                return JobRecord.from_row(row), False
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (job_id, path, priority, metadata, state, created, updated) VALUES (?,?,?,?,?,?,?)",
                (job_id, str(path), priority, encoded, JobState.QUEUED.value, now, now),
            )
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row), True

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            msg = f"no upload job {job_id!r} in {self.path}"
            raise KeyError(msg)
        return JobRecord.from_row(row)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = set(changes) - _COLUMNS
        if unknown:
            msg = f"unknown journal columns: {sorted(unknown)}"
            raise ValueError(msg)
        values = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in changes.items()}
        if "metadata" in values:
            values["metadata"] = json.dumps(values["metadata"], sort_keys=True)
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), job_id))  # noqa: S608
        return self.get(job_id)

    def jobs(self, *, unfinished_only: bool = False) -> list[JobRecord]:
        """Every job in queue order: lower priority number first, then arrival order."""
        query = "SELECT * FROM jobs"
        params: tuple[str, ...] = ()
        if unfinished_only:
            query += " WHERE state NOT IN (?, ?)"
            params = tuple(s.value for s in ENDED_STATES)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY priority, seq", params).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def recent_ended(self, limit: int) -> list[JobRecord]:
        """The ``limit`` most recently ended jobs, newest first (the heartbeat's recent window)."""
        ended = tuple(s.value for s in ENDED_STATES)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY updated DESC, seq DESC LIMIT ?", (*ended, limit)
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state, whatever the history length."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def in_state(self, state: JobState) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY priority, seq", (state.value,))
            return [JobRecord.from_row(row) for row in rows.fetchall()]

    def delete(self, job_ids: list[str]) -> int:
        """Forget these jobs (``purge`` of failed entries); returns how many rows went."""
        with self._transaction() as db:
            return sum(db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,)).rowcount for job_id in job_ids)

    def prune_complete(self, older_than: float) -> int:
        """Drop complete jobs last updated before ``older_than`` (epoch s) whose retention has acted."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM jobs WHERE state = ? AND retention_pending = 0 AND updated < ?",
                (JobState.COMPLETE.value, older_than),
            )
            return cursor.rowcount

    def runnable(self, now: float, exclude: set[str]) -> list[JobRecord]:
        """Unfinished jobs whose park time is over, in queue order."""
        return [j for j in self.jobs(unfinished_only=True) if j.job_id not in exclude and j.next_attempt <= now]
