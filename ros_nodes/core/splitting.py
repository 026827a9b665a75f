"""When to close a split: by size and by duration, like rosbag2's ``max_bag_size`` / ``max_bag_duration``."""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000
# Larger than any byte count or ns timestamp: "no limit" that still compares as an int.
UNLIMITED = 2**63


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
        return messages > 0 and (next_size > self.room(size) or next_ns >= self.deadline(first_ns))

    def room(self, size: int) -> int:
        """The largest next message that still fits a split of ``size`` bytes (``UNLIMITED`` without a size limit).

        ``room`` and ``deadline`` let the writer decide per message with two integer
        comparisons instead of a call: it is the recorder's hottest loop.
        """
        return self.max_bytes - size if self.max_bytes else UNLIMITED

    def deadline(self, first_ns: int) -> int:
        """The first timestamp that no longer belongs to a split starting at ``first_ns``."""
        return first_ns + self.max_duration_ns if self.max_duration_s else UNLIMITED

    def expired(self, *, messages: int, first_ns: int, now_ns: int) -> bool:
        """True when an idle split has outlived its duration (no message arrived to trigger the split)."""
        return bool(self.max_duration_s) and messages > 0 and now_ns - first_ns >= self.max_duration_ns
