"""Hand a closed bag to the uploader: each file of the bag is one upload, linked by metadata.

Why files and not one archive: the storage file is the bulk of the bytes and
is already a complete, self-describing bag (MCAP carries the rosbag2 metadata
in its summary); uploading it as it is costs no extra pass over the bytes and
lands on the server byte-identical and directly usable by ``ros2 bag``,
Foxglove or ``rosbags``. ``metadata.yaml`` follows as a second, tiny upload
with the same ``bag`` id, so the server can rebuild the directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ros_nodes.core.ledger import FAILED, QUEUED, VERIFIED, Entry, Ledger

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.yaml"
PART_STORAGE = "storage"
PART_METADATA = "metadata"
# Seconds between sweeps that queue again every file the server has not verified (besides the one at start).
REQUEUE_INTERVAL = 300.0
_ENDED = ("complete", "failed")


class Uploader(Protocol):
    """The one call the core needs from ``core.network_manager.NetworkManager``."""

    def add_upload(self, file_path: str, priority: int = ..., metadata: dict[str, Any] | None = None) -> str: ...


@dataclass
class BagInfo:
    """What the server and the dashboard learn about a bag besides its bytes."""

    bag: str
    path: Path
    robot_id: str
    session: str
    split_index: int = 0
    storage: str = "mcap"
    start_ns: int = 0
    end_ns: int = 0
    message_count: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    recovered: bool = False
    source: str = "recorder"

    def upload_metadata(self, part: str) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["part"] = part
        data["source_robot"] = self.robot_id
        return data


def bag_files(path: Path) -> list[Path]:
    """The files that make up a bag: storage files first, ``metadata.yaml`` last (it marks completion)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [p for p in files if p.name != METADATA_FILE] + [p for p in files if p.name == METADATA_FILE]


class Handoff:
    """Queues every file of a bag exactly once and tracks which ones the server verified."""

    def __init__(
        self,
        uploader: Uploader | None,
        ledger: Ledger,
        *,
        priority: int = 5,
        requeue_interval: float = REQUEUE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uploader = uploader
        self.ledger = ledger
        self.priority = priority
        self.requeue_interval = requeue_interval
        self._clock = clock
        self._last_requeue = clock()
        self._on_verified: list[Callable[[str], None]] = []

    def submit(self, info: BagInfo) -> list[str]:
        """Queue the bag's files not queued before; returns the new job ids (none without an uploader)."""
        if self.uploader is None:
            return []
        jobs = []
        for file in bag_files(info.path):
            if not self.ledger.claim(file, info.bag, file.stat().st_size):
                continue
            part = PART_METADATA if file.name == METADATA_FILE else PART_STORAGE
            job_id = self.uploader.add_upload(str(file), priority=self.priority, metadata=info.upload_metadata(part))
            self.ledger.queued(file, job_id)
            jobs.append(job_id)
            log.info("queued %s for upload as job %s (%d bytes, bag %s)", file, job_id, file.stat().st_size, info.bag)
        self.maybe_requeue()
        return jobs

    def on_verified(self, callback: Callable[[str], None]) -> None:
        """``callback(bag)`` runs once every file of a bag is verified on the server."""
        self._on_verified.append(callback)

    def job_finished(self, job_id: str, *, verified: bool) -> None:
        """Feed the uploader's verdict; a verified bag may now be deleted by the retention policy."""
        file = self.ledger.mark_job(job_id, VERIFIED if verified else FAILED)
        if file is None:
            return
        entry = next(e for e in self.ledger.entries() if e.file == file)
        if verified and self.ledger.bag_verified(entry.bag):
            log.info("bag %s verified on the server", entry.bag)
            for callback in self._on_verified:
                callback(entry.bag)
        elif not verified:
            log.warning("upload job %s of %s failed; the bag is kept", job_id, file)

    def listen(self, manager: object) -> None:
        """Subscribe to a NetworkManager's events (if it has ``add_listener``)."""
        add_listener = getattr(manager, "add_listener", None)
        if add_listener is not None:
            add_listener(self._event)

    def _event(self, event: Any) -> None:
        verdict = upload_verdict(event)
        if verdict is not None:
            self.job_finished(verdict[0], verified=verdict[1])
        self.maybe_requeue()

    def reconcile(self, manager: object) -> None:
        """Catch up on verdicts reached while no listener was attached, then queue again what is not verified."""
        status = getattr(manager, "status", None)
        if status is None:
            return
        queued = {e.job_id for e in self.ledger.entries(QUEUED)}
        for job in status():
            if job.get("job_id") in queued and job.get("state") in _ENDED:
                self.job_finished(job["job_id"], verified=job["state"] == "complete")
        self.requeue(manager)

    def maybe_requeue(self) -> int:
        """``requeue`` at most every ``requeue_interval`` seconds (called from busy paths: splits, scans)."""
        if self.uploader is None or self._clock() - self._last_requeue < self.requeue_interval:
            return 0
        return self.requeue(self.uploader)

    def requeue(self, manager: object) -> int:
        """Queue again every file not verified whose upload is no longer pending; returns how many.

        A bag must never be given up silently: a failed upload (file too large
        today, a limit raised tomorrow), a job purged from or pruned out of the
        uploader's journal, or a claim a crash interrupted all go back to the
        uploader. A file that is gone is only logged.
        """
        self._last_requeue = self._clock()
        jobs = {str(j.get("job_id")): j for j in getattr(manager, "status", list)()}
        count = 0
        for entry in self.ledger.entries():
            if entry.state == VERIFIED:
                continue
            job = jobs.get(entry.job_id or "")
            if job is not None and job.get("state") == "complete":
                self.job_finished(str(entry.job_id), verified=True)
            elif job is None or job.get("state") == "failed" or entry.state == FAILED:
                count += self._queue_again(manager, entry, job)
        return count

    def _queue_again(self, manager: object, entry: Entry, job: dict[str, Any] | None) -> int:
        file = Path(entry.file)
        if not file.is_file():
            log.warning("%s (bag %s) is not verified on the server and no longer on disk", file, entry.bag)
            return 0
        retry = getattr(manager, "retry", None)
        if job is not None and job.get("state") == "failed" and retry is not None and retry([entry.job_id]):
            job_id = str(entry.job_id)
        else:
            metadata = (job or {}).get("metadata") or {"bag": entry.bag}
            job_id = manager.add_upload(str(file), priority=self.priority, metadata=metadata)  # type: ignore[attr-defined]
        self.ledger.queued(file, job_id)
        log.info("queued %s again for upload as job %s (not verified yet, bag %s)", file, job_id, entry.bag)
        return 1

    def pending(self) -> Iterable[str]:
        return (e.file for e in self.ledger.entries() if e.state not in (VERIFIED, FAILED))


def upload_verdict(event: Any) -> tuple[str, bool] | None:
    """(job id, verified) from a ``core.client.events.UploadEvent``-like event, or None while it is still running.

    Read by attribute so the core does not import the client: ``verified`` is
    True only once the server confirmed the copy; ``failed`` is final.
    """
    job_id = getattr(event, "job_id", None)
    state = getattr(getattr(event, "state", None), "value", None)
    if not job_id:
        return None
    if getattr(event, "verified", False):
        return str(job_id), True
    if state == "failed":
        return str(job_id), False
    return None
