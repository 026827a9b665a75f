"""Background work of each server process: finalize jobs and the TTL sweep, coordinated through the state store.

A finalize job is a row, not a thread's memory: a worker claims it with a lease
and renews the lease while it works. If the worker is killed, the lease runs
out and any worker (after a restart, too) claims the job again. Each claim is a
new attempt number, the fencing token every state change of that attempt names:
a worker that stalled past its lease (a slow disk, a paused VM) and wakes up after
another attempt took over changes and deletes nothing. Lease times are the
database's clock. The sweep runs in whichever process holds the ``sweep`` lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from flask import Flask

from core.protocol import ErrorCode, UploadState
from core.server import events
from core.server.blobs import StoreUnavailable
from core.server.finalize import Finalizer, StaleAttempt
from core.server.service import DISK_FULL, UploadService

log = logging.getLogger("upload_server")

POLL_INTERVAL = 1.0
SWEEP_LEASE = "sweep"


class JobRunner:
    """Claims and runs finalize jobs and the periodic sweep; ``run_once`` drives it synchronously in tests."""

    def __init__(self, service: UploadService, finalizer: Finalizer) -> None:
        self.service = service
        self.finalizer = finalizer
        self.config = service.config
        self.state = service.state
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._next_sweep = 0.0
        service.on_job_queued = self._wake.set

    def clock(self) -> float:
        return self.service.clock()

    # --- one step ------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and run one due finalize job; True if there was one."""
        claimed = self.state.claim_job(self.holder, self.config.job_lease)
        if claimed is None:
            return False
        upload_id, attempt = claimed
        if attempt > 1:
            log.info("Finalize of %s: attempt %d (an earlier one failed, crashed or stalled)", upload_id, attempt)
        try:
            self.finalizer.run(upload_id, self._progress(upload_id, attempt), attempt=attempt)
        except StaleAttempt:
            log.warning(
                "Finalize attempt %d of %s was taken over by another attempt; it changed nothing", attempt, upload_id
            )
            return True
        except Exception as err:
            self._retry_or_give_up(upload_id, attempt, err)
            return True
        # The finalizer finished the job with its final transition; this covers the early returns.
        self.state.finish_job(upload_id, attempt)
        return True

    def _progress(self, upload_id: str, attempt: int) -> Callable[[int], None]:
        """Record progress and renew the lease every few seconds while the job reads the file."""
        every = max(0.2, self.config.job_lease / 3)
        last = time.monotonic()

        def report(done: int) -> None:
            nonlocal last
            if time.monotonic() - last < every:
                return
            last = time.monotonic()
            if not self.state.renew_job(upload_id, attempt, self.config.job_lease):
                raise StaleAttempt(upload_id)
            self.state.transition(upload_id, (UploadState.FINALIZING,), self.clock(), fence=attempt, progress=done)

        return report

    def _retry_or_give_up(self, upload_id: str, attempt: int, err: Exception) -> None:
        """Back off and retry; only real failures (not a full disk, not an unreachable store) count toward
        JOB_MAX_ATTEMPTS.

        A worker that crashed or stalled never gets here: its job is simply claimed again when
        its lease runs out, without touching the budget either.
        """
        full = isinstance(err, OSError) and err.errno in DISK_FULL
        transient = full or isinstance(err, StoreUnavailable)
        delay = min(60.0, 2.0 ** min(attempt, 6))
        failures = self.state.release_job(upload_id, attempt, delay, failed=not transient)
        if failures is None:
            return  # taken over meanwhile: the new attempt decides
        reason = "disk_full" if full else "store_unavailable" if transient else "error"
        events.finalize_retried.send(self, upload_id=upload_id, attempt=attempt, reason=reason)
        if transient:
            what = "storage full" if full else f"blob store unavailable ({err})"
            log.warning("Finalize attempt %d of %s: %s; retrying in %.0fs", attempt, upload_id, what, delay)
        elif failures >= self.config.job_max_attempts:
            log.error("Finalize attempt %d of %s failed", attempt, upload_id, exc_info=err)
            self._give_up(upload_id, attempt, failures)
        else:
            log.error("Finalize attempt %d of %s failed; retrying in %.0fs", attempt, upload_id, delay, exc_info=err)

    def _give_up(self, upload_id: str, attempt: int, failures: int) -> None:
        message = f"finalize failed {failures} times; see the server log"
        failed = self.state.finish_attempt(
            upload_id,
            attempt,
            self.clock(),
            (UploadState.FINALIZING,),
            state=UploadState.FAILED,
            error_code=ErrorCode.INTERNAL_ERROR.value,
            error_message=message,
        )
        if failed is None:  # aborted meanwhile: nothing to mark, only the job to drop
            self.state.finish_job(upload_id, attempt)
        if failed is not None:
            # Release the disk: the client re-initialises the upload (a failed upload is never resumed).
            self.service.blobs.remove_part(upload_id)
            self.service.blobs.discard_assembled(upload_id, upload_id)  # stored raw by an attempt
            log.error("Giving up on upload %s: %s", upload_id, message)
            events.upload_failed.send(
                self, upload_id=upload_id, owner=failed.owner, code=ErrorCode.INTERNAL_ERROR.value, message=message
            )

    def sweep_if_due(self) -> int | None:
        """Run the sweep if SWEEP_INTERVAL has passed and no other process holds the sweep lease."""
        interval = self.config.sweep_interval
        now = self.clock()
        if interval <= 0 or now < self._next_sweep:
            return None
        self._next_sweep = now + interval
        if not self.state.acquire_lease(SWEEP_LEASE, self.holder, interval):
            return None
        return self.service.sweep()

    # --- the thread -------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread in this process (again after a fork: threads do not survive one)."""
        if self._thread is not None and self._thread_pid == os.getpid() and self._thread.is_alive():
            return
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="upload-jobs", daemon=True)
        self._thread_pid = os.getpid()
        self._thread.start()

    def is_running(self) -> bool:
        """The worker thread is alive in this process (a forked copy of the runner has none)."""
        return self._thread is not None and self._thread_pid == os.getpid() and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread_pid == os.getpid():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
                self.sweep_if_due()
            except Exception:
                log.exception("Background job loop error")
                worked = False
            if not worked:
                self._wake.wait(POLL_INTERVAL)
                self._wake.clear()


def init_app(app: Flask, runner: JobRunner) -> None:
    """Start the runner with the first request of each process (gunicorn forks workers after import)."""
    app.extensions["job_runner"] = runner
    if not app.extensions["server_config"].background_jobs:
        return

    def _ensure_runner() -> None:
        runner.start()

    # First in line: a request that auth or a rate limit rejects must still start the runner.
    app.before_request_funcs.setdefault(None, []).insert(0, _ensure_runner)


def start_background(app: Flask) -> None:
    """Start background work now (dev server, gunicorn ``post_worker_init``) instead of at the first request."""
    if app.extensions["server_config"].background_jobs:
        app.extensions["job_runner"].start()
