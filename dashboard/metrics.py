"""Request, 429 and throughput counters shared by every gunicorn worker, in 10-second buckets.

Each worker counts in memory (one lock, no I/O on the request path) and adds its
deltas to a small SQLite table every few seconds from a daemon thread, so the
dashboard sees the whole server, not the one worker that served the page.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET_SECONDS = 10
KEEP_SECONDS = 3600

log = logging.getLogger("upload_server.dashboard")


@dataclass
class _Counts:
    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    bytes_in: int = 0


class RequestMetrics:
    """Counts requests per bucket; ``series()`` reads the sum over all workers."""

    def __init__(self, path: Path, *, flush_every: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.flush_every = flush_every
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, _Counts] = {}
        self._flusher_pid: int | None = None
        self._closed = threading.Event()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS buckets (t INTEGER PRIMARY KEY, requests INTEGER NOT NULL, "
                "rate_limited INTEGER NOT NULL, errors INTEGER NOT NULL, bytes_in INTEGER NOT NULL)"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def record(self, status: int, bytes_in: int) -> None:
        bucket = int(self.clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        with self._lock:
            counts = self._pending.setdefault(bucket, _Counts())
            counts.requests += 1
            counts.rate_limited += status == 429
            counts.errors += status >= 500
            counts.bytes_in += bytes_in if status < 400 else 0
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        # One flusher per process: gunicorn forks workers after the app may have been imported.
        if self._flusher_pid == os.getpid():
            return
        self._flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="dashboard-metrics", daemon=True).start()

    def _flush_forever(self) -> None:
        while not self._closed.wait(self.flush_every):
            try:
                self.flush()
            except (sqlite3.Error, OSError) as err:
                # Display counters are best effort: a failed flush (storage gone, disk full) must not
                # kill the thread; the next flush tries again with the counts it dropped lost.
                log.warning("dashboard counters not saved to %s: %s", self.path, err)

    def close(self) -> None:
        """Stop this process's flusher thread (after one last flush by the caller, if wanted)."""
        self._closed.set()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        with self._connect() as db:
            db.executemany(
                "INSERT INTO buckets VALUES (?, ?, ?, ?, ?) ON CONFLICT (t) DO UPDATE SET "
                "requests = requests + excluded.requests, rate_limited = rate_limited + excluded.rate_limited, "
                "errors = errors + excluded.errors, bytes_in = bytes_in + excluded.bytes_in",
                [(t, c.requests, c.rate_limited, c.errors, c.bytes_in) for t, c in pending.items()],
            )
            db.execute("DELETE FROM buckets WHERE t < ?", (int(self.clock()) - KEEP_SECONDS,))

    def series(self, window: int = 600) -> dict[str, Any]:
        """Per-bucket counts for the last ``window`` seconds, oldest first, zero-filled."""
        self.flush()
        now = int(self.clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        start = now - window + BUCKET_SECONDS
        with self._connect() as db:
            rows = {r[0]: r[1:] for r in db.execute("SELECT * FROM buckets WHERE t >= ?", (start,))}
        points = []
        for t in range(start, now + BUCKET_SECONDS, BUCKET_SECONDS):
            requests, limited, errors, bytes_in = rows.get(t, (0, 0, 0, 0))
            points.append(
                {"t": t, "requests": requests, "rate_limited": limited, "errors": errors, "bytes_in": bytes_in}
            )
        return {
            "bucket_seconds": BUCKET_SECONDS,
            "window_seconds": window,
            "requests": sum(p["requests"] for p in points),
            "rate_limited": sum(p["rate_limited"] for p in points),
            "errors": sum(p["errors"] for p in points),
            "points": points,
        }
