"""``memory://`` rate-limit counters without a thread per request.

limits' ``MemoryStorage`` (what ``memory://`` names in limits) starts a
``threading.Timer`` of 10 ms on every counter update unless the previous one is
still alive, only to drop expired counters; under a steady trickle of requests
that is a new thread for nearly every request (measured in BENCHMARKS.md). The
counters do not need it to be correct: ``get()`` already ignores and drops an
expired counter when it is read. This subclass keeps limits' own counting and
expiry code and only replaces the scheduling: the sweep of expired counters
(limits' ``__expire_events``) runs on the request path at most once every
``SWEEP_INTERVAL`` seconds, so memory stays bounded by the clients seen in that
time and no thread is ever started. ``limits`` is pinned to a range in
requirements.txt because the hook overridden here is its private method; the
test ``test_rate_limited_requests_start_no_thread`` fails if it moves.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from limits.storage import MemoryStorage

SCHEME = "upload-memory"
SWEEP_INTERVAL = 1.0


class SweptMemoryStorage(MemoryStorage):
    """``MemoryStorage`` whose expiry sweep runs inline, at most once per ``SWEEP_INTERVAL``, on no extra thread."""

    STORAGE_SCHEME = [SCHEME]  # limits registers the class under this scheme

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the one Timer the base starts at construction
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides the base's name-mangled hook
        now = time.time()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_INTERVAL
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._sweep_lock.release()


def storage_uri(configured: str) -> str:
    """The URI the limits use: ``memory://`` becomes this module's storage, anything else (redis) is kept."""
    return f"{SCHEME}://" if configured.split("://", 1)[0] == "memory" else configured
