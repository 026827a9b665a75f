"""Upload state behind a small interface: SQLite (WAL, shared by every gunicorn worker) is the embedded default.

The interface speaks only in ``UploadRecord``s, chunk indices and job/lease
names, so a Redis implementation can replace SQLite without the service
noticing. Every state change is a compare-and-set (``transition``): two
workers can never both finalize, abort or expire the same upload.
Times are plain epoch seconds passed in by the caller, which owns the clock.
"""

from __future__ import annotations

import abc
import errno
import json
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.protocol import Codec, UploadState
from core.sqlite import ThreadConnections, transaction


@dataclass(frozen=True)
class UploadRecord:
    """One upload session, as stored."""

    upload_id: str
    owner: str
    filename: str
    filesize: int
    chunk_size: int
    chunks: int
    created_at: float
    updated_at: float
    md5: str | None = None
    sha256: str | None = None
    compression: Codec = Codec.NONE  # what the client asked for
    state: UploadState = UploadState.UPLOADING
    blob_id: str | None = None  # the stored file (shared by deduplicated uploads)
    codec: Codec | None = None  # how the stored file is encoded
    stored_size: int | None = None
    verified: bool = False
    deduplicated: bool = False
    error_code: str | None = None
    error_message: str | None = None
    progress: int = 0  # bytes processed by the finalize job
    metadata: dict[str, Any] = field(default_factory=dict)


MUTABLE_FIELDS = frozenset(
    {"state", "blob_id", "codec", "stored_size", "verified", "md5", "sha256"}
    | {"error_code", "error_message", "progress", "deduplicated"}
)


def check_mutable(changes: Collection[str]) -> None:
    """Refuse a ``transition`` that would rewrite an upload's identity (owner, file, size, ...)."""
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        msg = f"not updatable: {sorted(unknown)}"
        raise ValueError(msg)


@dataclass(frozen=True)
class UploadQuery:
    """A page of the upload listing, newest first."""

    owner: str | None = None
    state: UploadState | None = None
    limit: int = 50
    offset: int = 0


class StateStore(abc.ABC):
    """Where upload sessions, received chunks, finalize jobs and leases live.

    Implementations must be safe to use from several threads and processes at once.
    """

    @abc.abstractmethod
    def create_upload(self, record: UploadRecord) -> None:
        """Insert a new upload. Like every write, raises ``OSError(ENOSPC)`` when the store is full."""

    @abc.abstractmethod
    def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    @abc.abstractmethod
    def find_resumable(
        self, *, owner: str, filename: str, filesize: int, chunk_size: int, md5: str | None, sha256: str | None
    ) -> UploadRecord | None:
        """The newest uploading/finalizing upload of the same file by the same owner."""

    @abc.abstractmethod
    def find_duplicate(
        self, *, filesize: int, md5: str | None, sha256: str | None, owner: str | None
    ) -> UploadRecord | None:
        """A complete, verified upload with this sha256 (or md5 and size); ``owner=None`` searches all owners."""

    @abc.abstractmethod
    def list_uploads(self, query: UploadQuery) -> tuple[list[UploadRecord], int]:
        """One page of uploads, newest first, and the total matching the filters."""

    @abc.abstractmethod
    def transition(
        self, upload_id: str, from_states: Collection[UploadState], now: float, **changes: Any
    ) -> UploadRecord | None:
        """Apply ``changes`` only if the upload is in one of ``from_states``; the new record, or None if not."""

    @abc.abstractmethod
    def record_chunk(self, upload_id: str, index: int, sha256: str, now: float) -> int | None:
        """Mark a chunk received (and the upload active) if it is still uploading.

        Returns the number of chunks received so far, or None if the upload is no longer uploading.
        """

    @abc.abstractmethod
    def chunk_sha256(self, upload_id: str, index: int) -> str | None:
        """The sha256 of an acknowledged chunk, None if it has not been received."""

    @abc.abstractmethod
    def received_chunks(self, upload_id: str) -> dict[int, str]:
        """Chunk index → sha256 of every acknowledged chunk."""

    @abc.abstractmethod
    def stale_uploads(self, idle_before: float, limit: int = 100) -> list[UploadRecord]:
        """Uploads still ``uploading`` whose last activity is older than ``idle_before``."""

    @abc.abstractmethod
    def start_finalize(self, upload_id: str, now: float) -> UploadRecord | None:
        """Atomically move an upload from uploading to finalizing and queue its finalize job."""

    @abc.abstractmethod
    def claim_job(self, holder: str, now: float, lease: float) -> tuple[str, int] | None:
        """Claim one due finalize job for ``lease`` seconds: (upload_id, attempt number), or None."""

    @abc.abstractmethod
    def renew_job(self, upload_id: str, holder: str, until: float) -> bool:
        """Extend a claimed job's lease; False if another holder has taken it over."""

    @abc.abstractmethod
    def release_job(self, upload_id: str, holder: str, retry_at: float) -> None:
        """Give a job back after a failed attempt; it becomes due again at ``retry_at``."""

    @abc.abstractmethod
    def finish_job(self, upload_id: str) -> None: ...

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        """Hold the named lease until ``until`` if it is free, expired or already ours (e.g. the sweep)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    filesize INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    md5 TEXT,
    sha256 TEXT,
    compression TEXT NOT NULL,
    state TEXT NOT NULL,
    blob_id TEXT,
    codec TEXT,
    stored_size INTEGER,
    verified INTEGER NOT NULL DEFAULT 0,
    deduplicated INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    progress INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS uploads_by_file ON uploads (owner, filename, filesize, state);
CREATE INDEX IF NOT EXISTS uploads_by_sha256 ON uploads (sha256, state);
CREATE INDEX IF NOT EXISTS uploads_by_md5 ON uploads (md5, filesize, state);
CREATE INDEX IF NOT EXISTS uploads_by_created ON uploads (created_at);
CREATE INDEX IF NOT EXISTS uploads_by_activity ON uploads (state, updated_at);
CREATE TABLE IF NOT EXISTS chunks (
    upload_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (upload_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    upload_id TEXT PRIMARY KEY,
    holder TEXT,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
"""

_COLUMNS = tuple(f.name for f in fields(UploadRecord))
_ACTIVE = (UploadState.UPLOADING.value, UploadState.FINALIZING.value)


def _to_row(record: UploadRecord) -> tuple[Any, ...]:
    return tuple(_to_column(name, getattr(record, name)) for name in _COLUMNS)


def _to_column(name: str, value: Any) -> Any:
    if name == "metadata":
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return int(value)
    return getattr(value, "value", value)


def _from_row(row: sqlite3.Row) -> UploadRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["metadata"] = json.loads(values["metadata"])
    values["compression"] = Codec(values["compression"])
    values["codec"] = Codec(values["codec"]) if values["codec"] else None
    values["state"] = UploadState(values["state"])
    values["verified"] = bool(values["verified"])
    values["deduplicated"] = bool(values["deduplicated"])
    return UploadRecord(**values)


class SQLiteStateStore(StateStore):
    """One SQLite file in WAL mode; a connection per thread and process (connections must not cross a fork)."""

    BUSY_TIMEOUT = 30.0

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # FULL: a chunk receipt is acknowledged to the robot, so it must survive power loss too.
        self._connections = ThreadConnections(path, timeout=self.BUSY_TIMEOUT, synchronous="FULL")
        # executescript commits on its own; CREATE ... IF NOT EXISTS makes concurrent starts harmless.
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction whose disk-full error is the same ``OSError`` as the blob store's."""
        try:
            with transaction(self._connection()) as db:
                yield db
        except sqlite3.OperationalError as err:
            if err.sqlite_errorcode == sqlite3.SQLITE_FULL:
                # Callers see a plain disk-full OSError, the same as from the blob store.
                raise OSError(errno.ENOSPC, f"state database: {err}") from err
            raise

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> UploadRecord | None:
        row = self._connection().execute(sql, params).fetchone()
        return _from_row(row) if row else None

    def create_upload(self, record: UploadRecord) -> None:
        marks = ",".join("?" * len(_COLUMNS))
        with self._write() as db:
            db.execute(f"INSERT INTO uploads ({','.join(_COLUMNS)}) VALUES ({marks})", _to_row(record))  # noqa: S608

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        return self._one("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))

    def find_resumable(
        self, *, owner: str, filename: str, filesize: int, chunk_size: int, md5: str | None, sha256: str | None
    ) -> UploadRecord | None:
        return self._one(
            "SELECT * FROM uploads WHERE owner = ? AND filename = ? AND filesize = ? AND chunk_size = ?"
            " AND md5 IS ? AND sha256 IS ? AND state IN (?, ?) ORDER BY created_at DESC LIMIT 1",
            (owner, filename, filesize, chunk_size, md5, sha256, *_ACTIVE),
        )

    def find_duplicate(
        self, *, filesize: int, md5: str | None, sha256: str | None, owner: str | None
    ) -> UploadRecord | None:
        if sha256:
            where, params = "sha256 = ?", [sha256]
        elif md5:
            where, params = "md5 = ? AND filesize = ?", [md5, filesize]
        else:
            return None
        if owner is not None:
            where += " AND owner = ?"
            params.append(owner)
        return self._one(
            f"SELECT * FROM uploads WHERE {where} AND state = ? AND verified = 1"  # noqa: S608
            " ORDER BY created_at LIMIT 1",
            (*params, UploadState.COMPLETE.value),
        )

    def list_uploads(self, query: UploadQuery) -> tuple[list[UploadRecord], int]:
        clauses, params = [], []
        if query.owner is not None:
            clauses.append("owner = ?")
            params.append(query.owner)
        if query.state is not None:
            clauses.append("state = ?")
            params.append(query.state.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        db = self._connection()
        total = db.execute(f"SELECT COUNT(*) FROM uploads {where}", params).fetchone()[0]  # noqa: S608
        rows = db.execute(
            f"SELECT * FROM uploads {where} ORDER BY created_at DESC, upload_id LIMIT ? OFFSET ?",  # noqa: S608
            (*params, query.limit, query.offset),
        ).fetchall()
        return [_from_row(row) for row in rows], int(total)

    def transition(
        self, upload_id: str, from_states: Collection[UploadState], now: float, **changes: Any
    ) -> UploadRecord | None:
        check_mutable(changes)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        states = [s.value for s in from_states]
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE uploads SET {assignments}{', ' if assignments else ''}updated_at = ?"  # noqa: S608
                f" WHERE upload_id = ? AND state IN ({','.join('?' * len(states))})",
                (*(_to_column(k, v) for k, v in changes.items()), now, upload_id, *states),
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        return _from_row(row)

    def record_chunk(self, upload_id: str, index: int, sha256: str, now: float) -> int | None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE uploads SET updated_at = ? WHERE upload_id = ? AND state = ?",
                (now, upload_id, UploadState.UPLOADING.value),
            )
            if cursor.rowcount != 1:
                return None
            db.execute(
                "INSERT OR REPLACE INTO chunks (upload_id, idx, sha256) VALUES (?, ?, ?)", (upload_id, index, sha256)
            )
            count = db.execute("SELECT COUNT(*) FROM chunks WHERE upload_id = ?", (upload_id,)).fetchone()[0]
        return int(count)

    def chunk_sha256(self, upload_id: str, index: int) -> str | None:
        row = (
            self._connection()
            .execute("SELECT sha256 FROM chunks WHERE upload_id = ? AND idx = ?", (upload_id, index))
            .fetchone()
        )
        return str(row[0]) if row else None

    def received_chunks(self, upload_id: str) -> dict[int, str]:
        rows = self._connection().execute("SELECT idx, sha256 FROM chunks WHERE upload_id = ?", (upload_id,))
        return {int(idx): digest for idx, digest in rows}

    def stale_uploads(self, idle_before: float, limit: int = 100) -> list[UploadRecord]:
        rows = self._connection().execute(
            "SELECT * FROM uploads WHERE state = ? AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (UploadState.UPLOADING.value, idle_before, limit),
        )
        return [_from_row(row) for row in rows]

    def start_finalize(self, upload_id: str, now: float) -> UploadRecord | None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE uploads SET state = ?, progress = 0, updated_at = ? WHERE upload_id = ? AND state = ?",
                (UploadState.FINALIZING.value, now, upload_id, UploadState.UPLOADING.value),
            )
            if cursor.rowcount != 1:
                return None
            db.execute(
                "INSERT OR REPLACE INTO jobs (upload_id, holder, due_at, attempts) VALUES (?, NULL, ?, 0)",
                (upload_id, now),
            )
            row = db.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
        return _from_row(row)

    def claim_job(self, holder: str, now: float, lease: float) -> tuple[str, int] | None:
        with self._write() as db:
            row = db.execute(
                "SELECT upload_id, attempts FROM jobs WHERE due_at <= ? ORDER BY due_at LIMIT 1", (now,)
            ).fetchone()
            if row is None:
                return None
            upload_id, attempts = row[0], int(row[1]) + 1
            db.execute(
                "UPDATE jobs SET holder = ?, due_at = ?, attempts = ? WHERE upload_id = ?",
                (holder, now + lease, attempts, upload_id),
            )
        return upload_id, attempts

    def renew_job(self, upload_id: str, holder: str, until: float) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET due_at = ? WHERE upload_id = ? AND holder = ?", (until, upload_id, holder)
            )
            return cursor.rowcount == 1

    def release_job(self, upload_id: str, holder: str, retry_at: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET holder = NULL, due_at = ? WHERE upload_id = ? AND holder = ?",
                (retry_at, upload_id, holder),
            )

    def finish_job(self, upload_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE upload_id = ?", (upload_id,))

    def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
                " WHERE leases.until <= ? OR leases.holder = excluded.holder",
                (name, holder, until, now),
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        self._connections.close()
