"""Folder watcher core: find bags that ``ros2 bag record`` (or anyone) finished writing and queue each once.

A bag counts as finished when nothing about it changed for ``settle`` seconds
and it looks closed: a folder has its ``metadata.yaml`` (rosbag2 writes it on
close), every MCAP file ends with the MCAP magic (written after the summary),
no SQLite journal is left, and (on Linux) no process holds one of its files
open for writing — a writer that pauses longer than ``settle`` is still a
writer. The ledger makes "once" hold across restarts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ros_nodes.core.bag_info import describe_bag
from ros_nodes.core.errors import RecorderError
from ros_nodes.core.handoff import METADATA_FILE, Handoff

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
STORAGE_SUFFIXES = (".mcap", ".db3")
_SQLITE_BUSY = ("-journal", "-wal")

Signature = tuple[tuple[str, int, int], ...]
PROC = Path("/proc")
_WRITE_MODES = os.O_WRONLY | os.O_RDWR


@dataclass
class _Seen:
    signature: Signature
    since: float


def signature(path: Path) -> Signature:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    result = []
    for file in files:
        stat = file.stat()
        result.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(result)


def mcap_closed(file: Path) -> bool:
    size = file.stat().st_size
    if size < 2 * len(MCAP_MAGIC):
        return False
    with file.open("rb") as stream:
        stream.seek(size - len(MCAP_MAGIC))
        return stream.read() == MCAP_MAGIC


def looks_closed(path: Path) -> bool:
    """The format-level signs that a writer finished this bag (stability is checked separately)."""
    if path.is_dir() and not (path / METADATA_FILE).is_file():
        return False
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    for file in files:
        if any(file.name.endswith(suffix) for suffix in _SQLITE_BUSY):
            return False
        if file.suffix == ".db3" and any(file.with_name(file.name + s).exists() for s in _SQLITE_BUSY):
            return False
        if file.suffix == ".mcap" and not mcap_closed(file):
            return False
    return True


def _writable_fd(fdinfo: Path) -> bool:
    try:
        for line in fdinfo.read_text().splitlines():
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & _WRITE_MODES)
    except (OSError, ValueError, IndexError):
        return False
    return False


def open_for_writing(files: list[Path], proc: Path = PROC) -> bool:
    """True when some process (that we may inspect) has one of ``files`` open for writing; False without /proc."""
    wanted = {os.path.realpath(f) for f in files}
    if not proc.is_dir():
        return False
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            fds = list((pid / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted and _writable_fd(pid / "fdinfo" / fd.name):
                return True
    return False


class FolderWatcher:
    """Call ``scan()`` periodically; it returns the bags it queued this time."""

    def __init__(
        self,
        root: Path,
        handoff: Handoff,
        *,
        robot_id: str,
        settle: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.handoff = handoff
        self.robot_id = robot_id
        self.settle = settle
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}

    def candidates(self) -> list[Path]:
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() or path.suffix in STORAGE_SUFFIXES:
                found.append(path)
        return found

    def scan(self) -> list[Path]:
        now = self._clock()
        queued = []
        current = self.candidates()
        for path in current:
            try:
                if self._ready(path, now) and self._queue(path):
                    queued.append(path)
            except (OSError, RecorderError) as err:
                # Vanished or half-written while we looked: the next scan decides again.
                log.debug("skipping %s this scan: %s", path, err)
        for gone in set(self._seen) - set(current):
            del self._seen[gone]
        return queued

    def settled(self) -> bool:
        """True when nothing seen in the folder changed for ``settle`` seconds (for one-shot runs)."""
        now = self._clock()
        return all(now - seen.since >= self.settle for seen in self._seen.values())

    def _ready(self, path: Path, now: float) -> bool:
        sig = signature(path)
        seen = self._seen.get(path)
        if seen is None or seen.signature != sig:
            self._seen[path] = _Seen(sig, now)
            return False
        if now - seen.since < self.settle or not looks_closed(path):
            return False
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        if open_for_writing(files):
            log.debug("%s looks finished but is still open for writing", path)
            return False
        return True

    def _queue(self, path: Path) -> bool:
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        if all(self.handoff.ledger.known(file) for file in files):
            return False
        info = describe_bag(path, robot_id=self.robot_id, source="watch")
        jobs = self.handoff.submit(info)
        if jobs:
            log.info("bag %s is complete: queued %d files", path, len(jobs))
        return bool(jobs)
