"""Request, 429 and throughput counters shared by every gunicorn worker (and host), in 10-second buckets.

Each worker counts in memory (one lock, no I/O on the request path) and adds its
deltas to a shared store every few seconds from a daemon thread, so the dashboard
sees the whole server, not the one worker that served the page. The store is a
table of the state database (SQLite in UPLOAD_DIR for one host, PostgreSQL for
several); buckets older than an hour are deleted with each flush.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from core.config import ServerConfig
from core.server import db
from core.server.db import dashboard_buckets, upsert

BUCKET_SECONDS = 10
KEEP_SECONDS = 3600

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


class SQLCounters(CounterStore):
    """The ``dashboard_buckets`` table of the state database: every worker of every host."""

    errors = (SQLAlchemyError, OSError)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, deltas: Mapping[int, Counts], now: float) -> None:
        c = dashboard_buckets.c
        with db.write(self.engine) as conn:
            for t, counts in sorted(deltas.items()):
                stmt = upsert(conn, dashboard_buckets).values(t=t, **vars(counts))
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["t"],
                        set_={name: getattr(c, name) + getattr(stmt.excluded, name) for name in _COUNTERS},
                    )
                )
            conn.execute(delete(dashboard_buckets).where(c.t < int(now) - KEEP_SECONDS))

    def read(self, buckets: Iterable[int]) -> dict[int, Counts]:
        wanted = set(buckets)
        if not wanted:
            return {}
        c = dashboard_buckets.c
        with db.read(self.engine) as conn:
            rows = conn.execute(
                select(c.t, *(getattr(c, name) for name in _COUNTERS)).where(c.t.between(min(wanted), max(wanted)))
            ).all()
        return {row[0]: Counts(*row[1:]) for row in rows if row[0] in wanted}


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
        self._flusher: threading.Thread | None = None
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
        self._flusher = threading.Thread(target=self._flush_forever, name="dashboard-metrics", daemon=True)
        self._flusher.start()

    def _flush_forever(self) -> None:
        while not self._closed.wait(self.flush_every):
            self.try_flush()

    def try_flush(self) -> None:
        """``flush``, but a failure only costs the counts it held.

        Display counters are best effort: a failed flush (storage or Redis gone, disk full) must
        neither kill the flusher thread nor fail the dashboard that reads them, which is what an
        operator opens to see why the disk is full.
        """
        try:
            self.flush()
        except self.store.errors as err:
            log.warning("dashboard counters not saved (%s): %s", type(self.store).__name__, err)

    def close(self, timeout: float = 10.0) -> None:
        """Stop this process's flusher thread and wait for it.

        Waiting matters: a flush still running holds a database connection, and the engine disposed
        right after would drop it unclosed.
        """
        self._closed.set()
        if self._flusher is not None and self._flusher_pid == os.getpid():
            self._flusher.join(timeout)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.store.add(pending, self.clock())

    def series(self, window: int = 600) -> dict[str, Any]:
        """Per-bucket counts for the last ``window`` seconds, oldest first, zero-filled."""
        self.try_flush()
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


def open_request_metrics(config: ServerConfig, engine: Engine | None = None) -> RequestMetrics:
    """Counters in the state database of STATE_STORE_URI (``engine`` when the app has opened it already)."""
    return RequestMetrics(SQLCounters(engine or db.checked_engine(config)))
