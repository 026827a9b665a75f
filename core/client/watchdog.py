"""Stall detection: abort a transfer that made no byte of progress for ``stalled_timeout`` seconds.

A read timeout only fires when a single ``recv`` waits too long; a black-holed
link can instead block a ``send`` on a full socket buffer, or trickle one byte
per minute. The watchdog looks at what matters, the time since the last byte
moved, and also enforces an overall per-chunk deadline (``upload_timeout``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Verdict(str, enum.Enum):
    STALLED = "stalled"
    DEADLINE = "deadline"


class Watch:
    """One watched transfer; the sender calls ``progress()`` whenever bytes move."""

    def __init__(
        self,
        name: str,
        abort: Callable[[], None],
        stall_after: float,
        deadline: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self._abort = abort
        self._clock = clock
        self.stall_after = stall_after
        self.started = clock()
        self.last_progress = self.started
        self.deadline = None if deadline is None else self.started + deadline
        self.verdict: Verdict | None = None

    def progress(self) -> None:
        self.last_progress = self._clock()

    def check(self, now: float) -> Verdict | None:
        """Fire the abort once when the transfer stalled or overran its deadline."""
        if self.verdict is not None:
            return None
        if self.stall_after > 0 and now - self.last_progress >= self.stall_after:
            self.verdict = Verdict.STALLED
        elif self.deadline is not None and now >= self.deadline:
            self.verdict = Verdict.DEADLINE
        else:
            return None
        log.warning(
            "watchdog: aborting %s (%s, %.1fs since last progress)",
            self.name,
            self.verdict.value,
            now - self.last_progress,
        )
        self._abort()
        return self.verdict

    def fire(self, verdict: Verdict) -> None:
        if self.verdict is None:
            self.verdict = verdict
            self._abort()


class Watchdog:
    """Checks every registered ``Watch`` from one background thread; ``check()`` runs a scan directly."""

    def __init__(self, *, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self, name: str, abort: Callable[[], None], *, stall_after: float, deadline: float | None = None
    ) -> Watch:
        w = Watch(name, abort, stall_after, deadline, self._clock)
        with self._lock:
            self._watches.add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def check(self) -> list[Watch]:
        """Scan once; returns the watches that fired now."""
        now = self._clock()
        with self._lock:
            watches = list(self._watches)
        return [w for w in watches if w.check(now) is not None]

    def abort_all(self) -> None:
        """Abort every watched transfer now (``stop()`` after its grace period)."""
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.fire(Verdict.DEADLINE)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="upload-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check()
