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
    """Counts updated by the writer thread per message as plain ints; the rate is worked out by ``snapshot()``.

    The writer only adds to ``count`` and ``bytes`` and sets ``last_ns`` (no call,
    no window bookkeeping per message). ``snapshot()`` derives the rate from
    message timestamps: messages since the previous anchor over the time they
    span, moving the anchor once that span reaches a second. So the rate is the
    average since the last status request at least a second (of message time)
    earlier, or since the topic's first message.
    """

    __slots__ = ("anchor_count", "anchor_ns", "bytes", "count", "last_ns", "msgtype", "rate_hz")

    def __init__(self, msgtype: str, first_ns: int) -> None:
        self.msgtype = msgtype
        self.count = 0
        self.bytes = 0
        self.last_ns = first_ns
        self.rate_hz = 0.0
        # The anchor is the first message, which is about to be counted.
        self.anchor_count = 1
        self.anchor_ns = first_ns

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        """Not thread-safe against itself: the recorder serialises its callers."""
        count, last_ns = self.count, self.last_ns
        span = last_ns - self.anchor_ns
        if span >= NS_PER_S:
            self.rate_hz = (count - self.anchor_count) * NS_PER_S / span
            self.anchor_count, self.anchor_ns = count, last_ns
        rate = 0.0 if now_ns - last_ns > STALE_RATE_NS else round(self.rate_hz, 2)
        return {"type": self.msgtype, "messages": count, "bytes": self.bytes, "rate_hz": rate}


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
