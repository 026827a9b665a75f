"""Progress and state events for the recorder and the dashboard, and the rate/ETA they carry."""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from core.client.journal import JobState

log = logging.getLogger(__name__)


class EventKind(str, enum.Enum):
    STATE = "state"  # the job entered ``state``
    PROGRESS = "progress"  # bytes acknowledged or sent
    RETRY = "retry"  # a request failed and will be repeated after ``retry_in`` seconds


@dataclass(frozen=True)
class UploadEvent:
    """One thing that happened to one upload; ``verified`` is True only on the final COMPLETE event."""

    kind: EventKind
    job_id: str
    path: str
    state: JobState
    bytes_sent: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None
    attempt: int = 0
    retry_in: float | None = None
    upload_id: str | None = None
    error: str | None = None
    verified: bool = False
    blocked: str | None = None  # a core.protocol.BlockedReason value while the upload cannot move
    blocked_until: float | None = None
    timestamp: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["state"] = self.state.value
        return data


Listener = Callable[[UploadEvent], None]


class EventBus:
    """Calls every listener for every event; a failing listener is logged and never breaks an upload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: UploadEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("upload event listener %r failed on %s", listener, event.kind.value)


class RateMeter:
    """Bytes per second over a sliding window, for the rate and ETA in events."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0  # sum of the samples' bytes, kept so ``rate`` does not walk the window
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._samples and now - self._samples[0][0] > self._window:
            self._total -= self._samples.popleft()[1]

    def add(self, nbytes: int) -> None:
        now = self._clock()
        with self._lock:
            self._samples.append((now, nbytes))
            self._total += nbytes
            self._expire(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._expire(now)
            if not self._samples:
                return 0.0
            span = max(now - self._samples[0][0], 0.5)
            return self._total / span

    def eta(self, remaining: int) -> float | None:
        rate = self.rate()
        return remaining / rate if rate > 0 else None
