"""What an exception from a storage layer means: the disk is full, the database is busy, or a bug.

The same full disk reaches the server as an ``OSError`` from its own writes,
SQLite's ``SQLITE_FULL`` (or only "disk I/O error" when it failed to grow the
``-shm``/``-wal`` files), PostgreSQL's ``disk_full`` SQLSTATE from psycopg,
each possibly wrapped by SQLAlchemy (``orig``) or re-raised ``from`` another
error. The error handlers ask these questions once, for every route.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
PG_DISK_FULL = "53100"
# PostgreSQL's retryable refusals: too_many_connections, lock_not_available, serialization_failure,
# deadlock_detected, cannot_connect_now (starting up or shutting down).
PG_CONTENTION = frozenset({"53300", "55P03", "40001", "40P01", "57P03"})
# "disk I/O error" is a full disk only when the storage root has less than this left; else a fault.
IOERR_FREE_FLOOR = 1024 * 1024


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err``, the driver error an SQLAlchemy error wraps (``orig``), and their causes, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        pending.extend([current.__context__, current.__cause__, orig if isinstance(orig, BaseException) else None])


def nearly_full(root: Path | None) -> bool:
    """Whether the filesystem of ``root`` has less than IOERR_FREE_FLOOR bytes left for us."""
    if root is None:
        return False
    try:
        stats = os.statvfs(root)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < IOERR_FREE_FLOOR


def _sqlite_code(err: sqlite3.Error) -> int:
    # Extended result codes (SQLITE_IOERR_SHMSIZE, ...) keep the primary code in the low byte.
    return int(getattr(err, "sqlite_errorcode", -1)) & 0xFF


def is_storage_full(err: BaseException, root: Path | None = None) -> bool:
    """Whether ``err`` (or what it wraps) means the disk or quota is full; ``root``: the storage root."""
    for cause in causes(err):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return True
        if getattr(cause, "sqlstate", None) == PG_DISK_FULL:
            return True
        if isinstance(cause, sqlite3.Error):
            code = _sqlite_code(cause)
            if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and nearly_full(root)):
                return True
    return False


def is_contention(err: BaseException) -> bool:
    """A busy database, worth a retry: SQLite locked past its busy timeout, PostgreSQL's PG_CONTENTION."""
    for cause in causes(err):
        if isinstance(cause, sqlite3.OperationalError) and ("locked" in str(cause) or "busy" in str(cause)):
            return True
        if getattr(cause, "sqlstate", None) in PG_CONTENTION:
            return True
    return False
