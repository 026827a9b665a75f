"""When to close a split: by size and by duration, like rosbag2's ``max_bag_size`` / ``max_bag_duration``."""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SplitPolicy:
    """A pure decision on message timestamps and byte counts, so tests need no clock.

    Duration is measured on receive timestamps (ns), as rosbag2 does: a split
    holds messages in ``[first, first + max_duration)``. Size counts the
    message bytes written to the split. A split always gets at least one
    message, so an oversized message still lands somewhere.
    """

    max_bytes: int = 0
    max_duration_s: float = 0.0

    @property
    def max_duration_ns(self) -> int:
        return int(self.max_duration_s * NS_PER_S)

    def split_before(self, *, messages: int, size: int, first_ns: int, next_size: int, next_ns: int) -> bool:
        """True when the next message must start a new split."""
        if messages == 0:
            return False
        if self.max_bytes and size + next_size > self.max_bytes:
            return True
        return bool(self.max_duration_s) and next_ns - first_ns >= self.max_duration_ns

    def expired(self, *, messages: int, first_ns: int, now_ns: int) -> bool:
        """True when an idle split has outlived its duration (no message arrived to trigger the split)."""
        return bool(self.max_duration_s) and messages > 0 and now_ns - first_ns >= self.max_duration_ns
