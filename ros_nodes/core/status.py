"""The recorder's status snapshot: what the dashboard, the heartbeat and the ROS status topic show."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from ros_nodes.core.splitting import NS_PER_S

# A topic that published nothing for this long shows a rate of 0 instead of its last rate.
STALE_RATE_NS = 2 * NS_PER_S


class RecorderState(str, enum.Enum):
    IDLE = "idle"
    RECORDING = "recording"
    PAUSED = "paused"
    STOPPED = "stopped"


class TopicStats:
    """Counts and a once-per-second rate, updated by the writer thread at almost no cost per message."""

    __slots__ = ("bytes", "count", "last_ns", "msgtype", "rate_hz", "window_count", "window_start")

    def __init__(self, msgtype: str) -> None:
        self.msgtype = msgtype
        self.count = 0
        self.bytes = 0
        self.rate_hz = 0.0
        self.window_start = 0
        self.window_count = 0
        self.last_ns = 0

    def add(self, timestamp: int, size: int) -> None:
        self.count += 1
        self.bytes += size
        self.last_ns = timestamp
        elapsed = timestamp - self.window_start
        if elapsed >= NS_PER_S:
            if self.window_start:
                self.rate_hz = self.window_count * NS_PER_S / elapsed
            self.window_start = timestamp
            self.window_count = 0
        self.window_count += 1

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        rate = 0.0 if now_ns - self.last_ns > STALE_RATE_NS else round(self.rate_hz, 2)
        return {"type": self.msgtype, "messages": self.count, "bytes": self.bytes, "rate_hz": rate}


@dataclass(frozen=True)
class RecorderStatus:
    """A JSON-ready snapshot; field names are the dashboard's and the status topic's contract."""

    state: str
    robot_id: str
    session: str | None
    current_bag: str | None
    storage: str
    started_at: float | None = None  # epoch seconds of start()
    elapsed: float | None = None  # seconds since start(), pauses included; frozen once stopped
    current_bag_bytes: int | None = None  # the open split's files on disk (refreshed at most once a second)
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages_written: int = 0
    bytes_written: int = 0
    splits_done: int = 0
    buffered_messages: int = 0
    buffered_bytes: int = 0
    buffer_capacity: int = 0
    dropped_messages: int = 0
    dropped_bytes: int = 0
    disk_free: int | None = None
    disk_floor: int = 0
    stop_reason: str | None = None
    last_error: str | None = None
    recovered_bags: list[str] = field(default_factory=list)
    unrecoverable_bags: list[str] = field(default_factory=list)
    uploads_pending: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
