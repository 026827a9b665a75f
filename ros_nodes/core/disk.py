"""Disk safety: a free-space floor, and a local retention limit that deletes only verified bags."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ros_nodes.core.errors import InsufficientDiskError

log = logging.getLogger(__name__)

FreeSpace = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class DiskGuard:
    """Checks the floor; ``free_space`` is injectable so tests can simulate a full disk."""

    path: Path
    floor: int
    free_space: FreeSpace = free_bytes

    def free(self) -> int:
        return self.free_space(self.path)

    def ok(self) -> bool:
        return self.free() >= self.floor

    def require(self) -> None:
        free = self.free()
        if free < self.floor:
            msg = f"only {free} bytes free in {self.path}, below the floor of {self.floor} bytes"
            raise InsufficientDiskError(msg)


def bag_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Retention:
    """Keeps at most ``keep_bags`` bags / ``keep_bytes`` bytes, deleting the oldest verified bags first.

    A bag the server has not verified is never deleted, even if the limit stays
    exceeded: losing data is worse than a full disk, which the floor handles.
    """

    keep_bags: int = 0
    keep_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.keep_bags or self.keep_bytes)

    def enforce(self, bags: list[Path], verified: Callable[[str], bool]) -> list[Path]:
        """Delete bags (oldest first in ``bags``) until within limits; returns the deleted ones."""
        remaining = list(bags)
        sizes = {bag: bag_size(bag) for bag in remaining}
        deleted = []
        for bag in bags:
            if not self._over(remaining, sizes):
                break
            if not verified(bag.name):
                continue
            remove_bag(bag)
            log.info("deleted verified bag %s (%d bytes) to stay within the local limit", bag, sizes[bag])
            remaining.remove(bag)
            deleted.append(bag)
        return deleted

    def _over(self, bags: list[Path], sizes: dict[Path, int]) -> bool:
        too_many = bool(self.keep_bags) and len(bags) > self.keep_bags
        too_big = bool(self.keep_bytes) and sum(sizes[b] for b in bags) > self.keep_bytes
        return too_many or too_big


def remove_bag(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
