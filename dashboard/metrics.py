"""Request, 429 and throughput counters shared by every gunicorn worker (and host), in 10-second buckets.

Each worker counts in memory (one lock, no I/O on the request path) and adds its
deltas to a shared store every few seconds from a daemon thread, so the dashboard
sees the whole server, not the one worker that served the page. The store is a
small SQLite table in UPLOAD_DIR (one host) or, with ``STATE_STORE_URI=redis://…``,
one Redis hash per bucket that expires by itself (several hosts).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import redis

from core import sqlite
from core.config import ServerConfig
from core.server.redis_store import PREFIX, connect

BUCKET_SECONDS = 10
KEEP_SECONDS = 3600
METRICS_FILE = "dashboard-metrics.sqlite3"

log = logging.getLogger("upload_server.dashboard")


@dataclass
class Counts:
    """One bucket's counts (field order is the storage's column order)."""

    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    bytes_in: int = 0


_COUNTERS = tuple(f.name for f in fields(Counts))


class CounterStore(abc.ABC):
    """Where every worker's bucket deltas are summed."""

    #: What a failed flush may raise: logged and survived, never fatal to the flusher thread.
    errors: tuple[type[Exception], ...] = (OSError,)

    @abc.abstractmethod
    def add(self, deltas: Mapping[int, Counts], now: float) -> None:
        """Add per-bucket deltas (keyed by bucket start) and forget buckets older than KEEP_SECONDS."""

    @abc.abstractmethod
    def read(self, buckets: Iterable[int]) -> dict[int, Counts]:
        """The summed counts of those buckets that have any."""


class SQLiteCounters(CounterStore):
    """A table in an SQLite file (WAL) beside the upload state: every worker of one host."""

    errors = (sqlite3.Error, OSError)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS buckets (t INTEGER PRIMARY KEY, requests INTEGER NOT NULL, "
                "rate_limited INTEGER NOT NULL, errors INTEGER NOT NULL, bytes_in INTEGER NOT NULL)"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite.connect(self.path, timeout=10, synchronous="NORMAL")
        try:
            with sqlite.transaction(db):
                yield db
        finally:
            db.close()

    def add(self, deltas: Mapping[int, Counts], now: float) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT INTO buckets VALUES (?, ?, ?, ?, ?) ON CONFLICT (t) DO UPDATE SET "
                "requests = requests + excluded.requests, rate_limited = rate_limited + excluded.rate_limited, "
                "errors = errors + excluded.errors, bytes_in = bytes_in + excluded.bytes_in",
                [(t, *astuple(c)) for t, c in deltas.items()],
            )
            db.execute("DELETE FROM buckets WHERE t < ?", (int(now) - KEEP_SECONDS,))

    def read(self, buckets: Iterable[int]) -> dict[int, Counts]:
        wanted = set(buckets)
        if not wanted:
            return {}
        with self._connect() as db:
            rows = db.execute("SELECT * FROM buckets WHERE t BETWEEN ? AND ?", (min(wanted), max(wanted)))
            return {row[0]: Counts(*row[1:]) for row in rows if row[0] in wanted}


class RedisCounters(CounterStore):
    """One hash per bucket (HINCRBY per counter) in the Redis every app server shares; Redis expires old buckets."""

    errors = (redis.RedisError, OSError)

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = client
        self._bucket = f"{prefix}dashboard:requests:"

    def add(self, deltas: Mapping[int, Counts], now: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for t, counts in deltas.items():
            key = f"{self._bucket}{t}"
            for name, value in zip(_COUNTERS, astuple(counts), strict=True):
                if value:
                    pipe.hincrby(key, name, value)
            # Counted from the bucket's start, so a late delta never keeps an old bucket alive.
            pipe.expireat(key, t + KEEP_SECONDS)
        pipe.execute()

    def read(self, buckets: Iterable[int]) -> dict[int, Counts]:
        wanted = list(buckets)
        pipe = self.redis.pipeline(transaction=False)
        for t in wanted:
            pipe.hmget(f"{self._bucket}{t}", *_COUNTERS)
        return {
            t: Counts(*(int(v or 0) for v in values))
            for t, values in zip(wanted, pipe.execute(), strict=True)
            if any(v is not None for v in values)
        }


class RequestMetrics:
    """Counts requests per bucket; ``series()`` reads the sum over all workers from the shared store."""

    def __init__(
        self, store: CounterStore, *, flush_every: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.flush_every = flush_every
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, Counts] = {}
        self._flusher_pid: int | None = None
        self._closed = threading.Event()

    def record(self, status: int, bytes_in: int) -> None:
        bucket = int(self.clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        with self._lock:
            counts = self._pending.setdefault(bucket, Counts())
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
            except self.store.errors as err:
                # Display counters are best effort: a failed flush (storage or Redis gone, disk full) must not
                # kill the thread; the next flush tries again with the counts it dropped lost.
                log.warning("dashboard counters not saved (%s): %s", type(self.store).__name__, err)

    def close(self) -> None:
        """Stop this process's flusher thread (after one last flush by the caller, if wanted)."""
        self._closed.set()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.store.add(pending, self.clock())

    def series(self, window: int = 600) -> dict[str, Any]:
        """Per-bucket counts for the last ``window`` seconds, oldest first, zero-filled."""
        self.flush()
        now = int(self.clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        buckets = range(now - window + BUCKET_SECONDS, now + BUCKET_SECONDS, BUCKET_SECONDS)
        stored = self.store.read(buckets)
        points = [{"t": t, **vars(stored.get(t, Counts()))} for t in buckets]
        return {
            "bucket_seconds": BUCKET_SECONDS,
            "window_seconds": window,
            "requests": sum(p["requests"] for p in points),
            "rate_limited": sum(p["rate_limited"] for p in points),
            "errors": sum(p["errors"] for p in points),
            "points": points,
        }


def open_request_metrics(config: ServerConfig) -> RequestMetrics:
    """Counters in Redis when STATE_STORE_URI is set (like the upload state), else SQLite in UPLOAD_DIR."""
    if config.state_store_uri:
        return RequestMetrics(RedisCounters(connect(config.state_store_uri)))
    return RequestMetrics(SQLiteCounters(config.upload_dir / METRICS_FILE))
