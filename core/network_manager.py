"""NetworkManager: the robot's upload queue that gets every finished bag to the server, verified.

Public API (the seed's, which robot integrators code against)::

    manager = NetworkManager(upload_url="https://server:8080/upload", api_key=key)
    manager.upload_timeout = 600; manager.stalled_timeout = 120; manager.max_retries = 3
    manager.max_concurrent_uploads = 4; manager.bandwidth_limit = 1024 * 1024
    manager.add_listener(print)
    manager.start()
    job_id = manager.add_upload(file_path="/data/bag_0001.mcap", priority=1, metadata={"source": "robot1"})
    manager.wait(timeout=3600)

Priority: a LOWER number is uploaded FIRST; equal priorities go in arrival order.
Every accepted ``add_upload`` is in the SQLite journal (``state_dir``) before it
returns, so a reboot or ``kill -9`` loses nothing: the next ``start()`` resumes
each unfinished upload with only the chunks the server does not have. Only a
file the server calls too large, or a name it refuses, fails (``failed()``,
``retry()``, ``purge()``); everything else is retried, with the reason it is
blocked in ``status()``, events and ``heartbeat_status()``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from core.client.bandwidth import TokenBucket
from core.client.errors import PermanentUploadError, TransferAbortedError, UploadError
from core.client.events import EventBus, EventKind, Listener, UploadEvent
from core.client.job import JobSettings, UploadJob, finish_pending_retention
from core.client.journal import JobRecord, JobState, Journal
from core.client.retention import Retention
from core.client.status import blocked_label, heartbeat_uploads
from core.client.transfer import ServerClient
from core.client.watchdog import Watchdog
from core.config import ClientConfig
from core.protocol import BlockedReason

__all__ = ["DEFAULT_PRIORITY", "JobState", "NetworkManager", "UploadEvent"]

log = logging.getLogger(__name__)

DEFAULT_PRIORITY = 5
# A parked upload waits park_delay * 2**parks seconds (capped) before it is tried again.
MAX_PARK_DELAY = 30 * 60.0
# How often the dispatcher prunes complete journal entries older than ``journal_retention``.
PRUNE_INTERVAL = 3600.0
NO_KEY_HINT = "the server demands an API key and none is set: pass NetworkManager(api_key=...) or set UPLOAD_API_KEY"


class NetworkManager:
    """Uploads journaled bags in priority order, at most ``max_concurrent_uploads`` at a time.

    Plain attributes (``upload_timeout``, ``init_timeout``, ``stalled_timeout``,
    ``max_retries``, ``max_concurrent_uploads``, ``chunk_size``, …) may be changed
    at any time; each new chunk or job reads them afresh. ``bandwidth_limit``
    (bytes/s shared by all uploads; 0 or None = unlimited) applies at once.
    """

    def __init__(
        self,
        upload_url: str | None = None,
        api_key: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        max_concurrent_uploads: int | None = None,
        bandwidth_limit: float | None = None,
        chunk_size: int | None = None,
        chunk_parallelism: int | None = None,
        retention: Retention | str | None = None,
        uploaded_dir: str | os.PathLike[str] | None = None,
        verify: bool | str | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        cfg = config or ClientConfig.from_env()
        self.upload_url = upload_url or cfg.upload_url
        self.api_key = api_key if api_key is not None else cfg.api_key
        self.state_dir = Path(state_dir) if state_dir is not None else cfg.resolved_state_dir()
        # The seed's timeouts and retry count, in seconds.
        self.upload_timeout: float = 300
        self.init_timeout: float = 10
        self.stalled_timeout: float = 60
        self.max_retries: int = 5
        self.max_concurrent_uploads: int = max_concurrent_uploads or cfg.max_concurrent_uploads
        self.chunk_size: int = chunk_size or cfg.chunk_size
        self.chunk_parallelism: int = chunk_parallelism or cfg.chunk_parallelism
        self.retention = Retention(retention or cfg.retention)
        self.uploaded_dir = Path(uploaded_dir) if uploaded_dir else cfg.uploaded_dir
        self.park_delay: float = 30.0
        self.max_park_delay: float = MAX_PARK_DELAY
        self.backoff_initial: float = 1.0
        self.backoff_max: float = 60.0
        self.stop_grace: float = 10.0
        # Complete entries older than this (seconds) are pruned from the journal; failed ones stay until purged.
        self.journal_retention: float = cfg.journal_retention
        self.heartbeat_recent: int = cfg.heartbeat_recent
        self._warned_no_key = False
        self._last_prune = 0.0

        ca = str(cfg.ca_bundle) if cfg.ca_bundle else True
        self._client = ServerClient(self.upload_url, self.api_key, verify if verify is not None else ca)
        self._journal = Journal(self.state_dir)
        self._stopping = threading.Event()
        self._bucket = TokenBucket(
            bandwidth_limit if bandwidth_limit is not None else cfg.bandwidth_limit, sleep=self._interruptible_sleep
        )
        self._watchdog = Watchdog()
        self._events = EventBus()
        self._cond = threading.Condition()
        self._active: dict[str, tuple[threading.Thread, UploadJob]] = {}
        self._dispatcher: threading.Thread | None = None

    # --- settings -------------------------------------------------------------------------------
    @property
    def bandwidth_limit(self) -> float | None:
        return self._bucket.rate or None

    @bandwidth_limit.setter
    def bandwidth_limit(self, value: float | None) -> None:
        self._bucket.rate = value

    def _settings(self) -> JobSettings:
        return JobSettings(
            upload_timeout=self.upload_timeout,
            init_timeout=self.init_timeout,
            stalled_timeout=self.stalled_timeout,
            max_retries=self.max_retries,
            chunk_size=self.chunk_size,
            chunk_parallelism=self.chunk_parallelism,
            retention=self.retention,
            uploaded_dir=self.uploaded_dir,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
        )

    # --- public API -------------------------------------------------------------------------------
    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(UploadEvent)`` for every state change, retry and progress step (from worker threads)."""
        self._events.add(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._events.remove(callback)

    def add_upload(
        self,
        file_path: str | os.PathLike[str],
        priority: int = DEFAULT_PRIORITY,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Queue a finished bag; returns its job id once it is durably journaled.

        Adding a path that already has an unfinished job returns that job's id.
        """
        path = Path(file_path).resolve()
        if not path.is_file():
            msg = f"not a file: {path}"
            raise FileNotFoundError(msg)
        record, created = self._journal.add(path, int(priority), metadata)
        if created:
            log.info("upload %s: queued %s (priority %d)", record.job_id, path, record.priority)
            self._emit_state(record)
        with self._cond:
            self._cond.notify_all()
        return record.job_id

    def start(self) -> None:
        """Start uploading; unfinished uploads from an earlier run resume first, in queue order.

        Retention a crash interrupted (journaled complete, bag not yet deleted or
        moved) is finished first; complete entries past ``journal_retention`` are pruned.
        """
        if self._dispatcher is not None and self._dispatcher.is_alive():
            return
        self._finish_interrupted_retention()
        self.prune()
        self._stopping.clear()
        self._watchdog.interval = max(0.05, min(0.5, self.stalled_timeout / 4))
        self._watchdog.start()
        self._dispatcher = threading.Thread(target=self._dispatch, name="upload-dispatcher", daemon=True)
        self._dispatcher.start()

    def stop(self, timeout: float | None = None) -> list[str]:
        """Stop gracefully within ``timeout`` (default ``stop_grace``) seconds; returns the threads left running.

        In-flight chunks get the first half of the time to finish, then are cut
        off; hashing stops between pieces. Every unfinished upload stays in the
        journal and resumes on the next ``start()``. A non-empty result (logged
        as an error) names threads that did not end in time.
        """
        budget = self.stop_grace if timeout is None else timeout
        deadline = time.monotonic() + budget
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._join([self._dispatcher] if self._dispatcher else [], deadline)
        self._join(self._threads(), time.monotonic() + max(0.0, deadline - time.monotonic()) / 2)
        self._watchdog.abort_all()
        self._join(self._threads(), deadline)
        self._watchdog.stop()
        left = [t.name for t in [self._dispatcher, *self._threads()] if t is not None and t.is_alive()]
        if left:
            log.error("stop(): %d thread(s) still running after %.1fs: %s", len(left), budget, ", ".join(left))
        return left

    @staticmethod
    def _join(threads: list[threading.Thread], deadline: float) -> None:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, timeout: float | None = None, job_ids: Collection[str] | None = None) -> bool:
        """Block until every journaled upload (or those in ``job_ids``) has ended; False on timeout.

        Ended means complete or failed; a parked upload has not ended (it will be retried).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ended(job_ids):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))
        return True

    def status(self) -> list[dict[str, Any]]:
        """A snapshot of every upload in queue order, with live rate/ETA for the active ones.

        ``blocked`` names why a job is not moving (``auth``, ``rate_limited``,
        ``server_failed`` … see ``core.protocol.BlockedReason``), ``blocked_until``
        when it is tried next, and ``blocked_label`` says both for people.
        """
        return [self._entry(record) for record in self._journal.jobs()]

    def _entry(self, record: JobRecord) -> dict[str, Any]:
        with self._cond:
            pair = self._active.get(record.job_id)
        job = pair[1] if pair else None
        entry = record.as_dict()
        entry.update(active=job is not None, rate=0.0, eta=None, blocked_label=blocked_label(record))
        if job is not None:
            sent = job.bytes_sent()
            entry.update(bytes_sent=sent, rate=job.meter.rate(), eta=job.meter.eta((record.size or 0) - sent))
        return entry

    def heartbeat_status(self) -> dict[str, Any]:
        """The ``uploads`` part of a heartbeat: bounded whatever the history (active jobs + a recent window)."""
        active = [self._entry(r) for r in self._journal.jobs(unfinished_only=True)]
        recent = [self._entry(r) for r in self._journal.recent_ended(self.heartbeat_recent)]
        return heartbeat_uploads(active, recent, self._journal.counts())

    def job(self, job_id: str) -> JobRecord:
        """A running job's own record (its progress reaches the journal at most once a second), else the journal's."""
        with self._cond:
            pair = self._active.get(job_id)
        return pair[1].record if pair else self._journal.get(job_id)

    def failed(self) -> list[JobRecord]:
        """Uploads that can never succeed as they are (file too large, name refused), oldest first."""
        return self._journal.in_state(JobState.FAILED)

    def retry(self, job_ids: Collection[str] | None = None) -> list[str]:
        """Queue failed uploads again (all of them, or ``job_ids``); returns the ids re-queued."""
        wanted = None if job_ids is None else set(job_ids)
        again = []
        for record in self.failed():
            if wanted is None or record.job_id in wanted:
                self._journal.update(
                    record.job_id, state=JobState.QUEUED, error=None, blocked=None, blocked_until=None,
                    attempts=0, parks=0, next_attempt=0.0, sha256=None, upload_id=None, bytes_sent=0,
                )  # fmt: skip
                log.info("upload %s: failed upload of %s queued again", record.job_id, record.path)
                again.append(record.job_id)
        with self._cond:
            self._cond.notify_all()
        return again

    def purge(self, job_ids: Collection[str] | None = None) -> list[str]:
        """Forget failed uploads (all, or ``job_ids``) in the journal; the bags stay on disk. Returns the ids."""
        wanted = None if job_ids is None else set(job_ids)
        gone = [r.job_id for r in self.failed() if wanted is None or r.job_id in wanted]
        self._journal.delete(gone)
        for job_id in gone:
            log.info("upload %s: failed entry purged from the journal", job_id)
        return gone

    def prune(self, now: float | None = None) -> int:
        """Drop complete entries older than ``journal_retention`` seconds; returns how many went."""
        current = time.time() if now is None else now
        self._last_prune = current
        if self.journal_retention <= 0:
            return 0
        pruned = self._journal.prune_complete(current - self.journal_retention)
        if pruned:
            log.info("journal: pruned %d complete uploads older than %.0fs", pruned, self.journal_retention)
        return pruned

    def close(self) -> None:
        """Stop, then close the journal, unless a thread that may still write to it outlived ``stop()``."""
        left = self.stop()
        if left:
            log.error("close(): journal left open for %s", ", ".join(left))
            return
        self._journal.close()

    def __enter__(self) -> NetworkManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scheduling -----------------------------------------------------------------------------------
    def _threads(self) -> list[threading.Thread]:
        with self._cond:
            return [thread for thread, _job in self._active.values()]

    def _ended(self, job_ids: Collection[str] | None) -> bool:
        if job_ids is None:
            return not self._active and not self._journal.jobs(unfinished_only=True)
        return all(job_id not in self._active and self._journal.get(job_id).ended for job_id in job_ids)

    def _interruptible_sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            msg = "stopping"
            raise TransferAbortedError(msg)

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            if time.time() - self._last_prune >= PRUNE_INTERVAL:
                self.prune()
            with self._cond:
                wake_in = self._launch_runnable()
                self._cond.wait(min(wake_in, PRUNE_INTERVAL))

    def _finish_interrupted_retention(self) -> None:
        for record in self._journal.in_state(JobState.COMPLETE):
            if record.retention_pending:
                log.info("upload %s: finishing retention (%s) of %s", record.job_id, record.retention, record.path)
                finish_pending_retention(self._journal, record)

    def _launch_runnable(self) -> float:
        """Start jobs while there is room; returns seconds until the next parked job becomes due."""
        now = time.time()
        free = max(1, self.max_concurrent_uploads) - len(self._active)
        waiting = [j for j in self._journal.jobs(unfinished_only=True) if j.job_id not in self._active]
        for record in [j for j in waiting if j.next_attempt <= now][: max(0, free)]:
            job = UploadJob(
                record,
                journal=self._journal,
                client=self._client,
                settings=self._settings,
                bucket=self._bucket,
                watchdog=self._watchdog,
                events=self._events,
                stopping=self._stopping,
                sleep=self._interruptible_sleep,
                on_blocked=self._note_blocked,
            )
            thread = threading.Thread(target=self._run_job, args=(job,), name=f"upload-{record.job_id[:8]}")
            self._active[record.job_id] = (thread, job)
            thread.start()
        due = [j.next_attempt - now for j in waiting if j.next_attempt > now]
        return max(0.05, min(due, default=5.0))

    def _run_job(self, job: UploadJob) -> None:
        try:
            job.run()
        except TransferAbortedError as err:
            log.info("upload %s: %s", job.record.job_id, err)
        except PermanentUploadError as err:
            self._finish(job, JobState.FAILED, str(err))
        except FileNotFoundError as err:
            self._finish(job, JobState.FAILED, f"bag disappeared before it was uploaded: {err}")
        except UploadError as err:
            self._park(job, str(err), getattr(err, "blocked", None) or job.record.blocked)
        except OSError as err:
            self._park(job, f"{type(err).__name__}: {err}", BlockedReason.IO_ERROR.value)
        except Exception as err:
            log.exception("upload %s: unexpected error; parking it", job.record.job_id)
            self._park(job, f"{type(err).__name__}: {err}", job.record.blocked)
        finally:
            job.client.close()
            with self._cond:
                self._active.pop(job.record.job_id, None)
                self._cond.notify_all()

    def _finish(self, job: UploadJob, state: JobState, error: str) -> None:
        log.error("upload %s: %s (%s): %s", job.record.job_id, state.value, job.record.path, error)
        job.enter(state, error=error, blocked=BlockedReason.FAILED.value, blocked_until=None)

    def _note_blocked(self, job_id: str, blocked: str | None) -> bool:
        """Warn once when the server refuses a keyless client; True when that is why ``job_id`` is blocked."""
        if blocked != BlockedReason.AUTH.value or self.api_key:
            return False
        if not self._warned_no_key:
            self._warned_no_key = True
            log.warning("upload %s: %s", job_id, NO_KEY_HINT)
        return True

    def _park(self, job: UploadJob, error: str, blocked: str | None) -> None:
        """Wait ``park_delay * 2**parks`` (capped at ``max_park_delay``), then try again: a park never ends a job."""
        if self._note_blocked(job.record.job_id, blocked):
            error = f"{error} ({NO_KEY_HINT})"
        parks = job.record.parks
        delay = min(self.max_park_delay, self.park_delay * 2 ** min(parks, 10))
        until = time.time() + delay
        log.warning(
            "upload %s: parked for %.0fs (blocked: %s) after repeated failures: %s",
            job.record.job_id, delay, blocked or "unknown", error,
        )  # fmt: skip
        job.enter(
            JobState.PARKED, error=error, parks=parks + 1, next_attempt=until, blocked=blocked, blocked_until=until
        )

    def _emit_state(self, record: JobRecord) -> None:
        self._events.emit(
            UploadEvent(
                kind=EventKind.STATE,
                job_id=record.job_id,
                path=record.path,
                state=record.state,
                total=record.size or 0,
                upload_id=record.upload_id,
            )
        )


def _main() -> int:
    from core.client.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(_main())
