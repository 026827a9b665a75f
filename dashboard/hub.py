"""One dashboard snapshot per process per tick, shared by every live stream, and a cap on open streams.

Each SSE stream used to rebuild the whole state (robots, 2,000 upload records,
commands, counters) every second: 16 open tabs meant 16 rebuilds a second and
16 pinned worker threads, and ``/health`` and chunk PUTs queued behind them.
The hub loads the sources at most once per ``interval`` (whichever stream asks
first does the work, the others wait for it and reuse it), builds each distinct
filter's document once per load, and serializes it once. ``try_open`` admits at
most ``max_streams`` streams per process; the page polls (sharing the same
snapshot) when it is refused, so extra viewers cost a request every few seconds
instead of a thread each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dashboard.snapshot import UploadFilter


@dataclass(frozen=True)
class Snapshot:
    """A built state document with its wire form and its change-detection key, shared read-only."""

    document: dict[str, Any]
    data: str  # compact JSON, as sent in an SSE ``state`` event
    comparable: str  # the document without what changes on every tick (clock, free disk)
    generation: int


def comparable_form(document: dict[str, Any]) -> str:
    """The document without what changes on every tick (clock, free disk), for change detection."""
    server = {**document["server"], "storage": None}
    return json.dumps({**document, "server_time": None, "server": server}, sort_keys=True, separators=(",", ":"))


@dataclass
class _Generation:
    number: int
    loaded_at: float
    sources: Any
    documents: dict[UploadFilter, Snapshot] = field(default_factory=dict)


class SnapshotHub:
    """Shared, at most ``interval``-old snapshots for every stream and poll of this process."""

    def __init__(
        self,
        load: Callable[[], Any],
        build: Callable[[Any, UploadFilter], dict[str, Any]],
        *,
        interval: float,
        max_streams: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._build = build
        self.interval = interval
        self.max_streams = max_streams
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Generation | None = None
        self._streams = 0
        self.loads = 0  # how many times the sources were read (for tests and the benchmark)
        # Set when the worker is asked to stop: open streams say ``bye`` at their next tick instead of
        # holding the graceful shutdown (and ``systemctl restart``) for up to DASHBOARD_SSE_MAX_SECONDS.
        self.ending = threading.Event()

    def snapshot(self, flt: UploadFilter) -> Snapshot:
        """This filter's document from sources at most ``interval`` old; built once per load."""
        with self._lock:
            now = self._clock()
            current = self._current
            if current is None or now - current.loaded_at >= self.interval:
                number = current.number + 1 if current else 1
                current = self._current = _Generation(number, now, self._load())
                self.loads += 1
            cached = current.documents.get(flt)
            if cached is None:
                document = self._build(current.sources, flt)
                cached = Snapshot(
                    document, json.dumps(document, separators=(",", ":")), comparable_form(document), current.number
                )
                current.documents[flt] = cached
            return cached

    # --- the stream cap ---------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        return self._streams

    def try_open(self) -> bool:
        """Admit one more stream unless ``max_streams`` are open in this process; pair with ``close``."""
        with self._lock:
            if self._streams >= self.max_streams:
                return False
            self._streams += 1
            return True

    def close(self) -> None:
        with self._lock:
            self._streams = max(0, self._streams - 1)
