"""``GET /health/detailed``: is every dependency of an upload working, and if not, why.

The plain ``/health`` stays a cheap liveness answer for load balancers. This one
touches what an upload needs: the state database, a durable write in the storage
root, free space, the rate limiter's storage and the background jobs. Any failed
check turns the reply into 503 with one human-readable reason per failure, so an
operator (or an alert) learns what is wrong from the reply alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify

from core.config import ServerConfig
from core.protocol import ErrorCode, UploadState
from core.server.blobs import BlobStore, StoreUnavailable
from core.server.jobs import JobRunner
from core.server.limits import EXTENSION as LIMITER_EXTENSION
from core.server.limits import exempt
from core.server.state_store import StateStore, UploadQuery

log = logging.getLogger("upload_server.health")

DETAILED_HEALTH_PATH = "/health/detailed"
EXTENSION = "health_checks"
PROBE_DIR = ".health"
# A finalize job is reported stuck when its upload has not moved for this long (or 10 leases).
STUCK_AFTER = 600.0


@dataclass
class CheckResult:
    """One dependency: ``ok``, the reason when not, and numbers worth showing either way."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, **self.details}
        if self.reason:
            body["reason"] = self.reason
        return body


Check = Callable[[], CheckResult]


def timed(check: Check) -> Check:
    """Run ``check``, add its duration, and turn any exception into a failed check with its message."""

    def run() -> CheckResult:
        started = time.perf_counter()
        try:
            result = check()
        except Exception as err:  # a health check reports every failure as a reason, it never raises
            result = CheckResult(False, f"{type(err).__name__}: {err}")
        result.details["seconds"] = round(time.perf_counter() - started, 4)
        return result

    return run


def storage_check(upload_dir: Path, min_free: int) -> Check:
    """A durable write (write, fsync, remove) in the storage root, and enough free space."""

    def check() -> CheckResult:
        probe_dir = upload_dir / PROBE_DIR
        probe_dir.mkdir(parents=True, exist_ok=True)
        probe = probe_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        usage = shutil.disk_usage(upload_dir)
        details = {"path": str(upload_dir), "free_bytes": usage.free, "total_bytes": usage.total, "min_free": min_free}
        if usage.free < min_free:
            return CheckResult(
                False, f"only {usage.free} bytes free in {upload_dir} (HEALTH_MIN_FREE={min_free})", details
            )
        return CheckResult(True, details=details)

    return check


def limiter_check(get_limiter: Callable[[], Any | None], uri: str) -> Check:
    """The limiter's counters must be reachable, or limits silently become per-process (in-memory fallback).

    ``get_limiter`` is called at check time: the limiter is installed after every route exists.
    """

    def check() -> CheckResult:
        shown = uri.split("@")[-1]
        limiter = get_limiter()
        if limiter is None:
            return CheckResult(True, details={"enabled": False})
        if not limiter.storage.check():
            return CheckResult(False, f"rate-limit storage {shown} unreachable", {"storage": shown})
        return CheckResult(True, details={"enabled": True, "storage": shown})

    return check


def _payload(results: dict[str, CheckResult]) -> tuple[dict[str, Any], int]:
    reasons = [f"{name}: {r.reason}" for name, r in results.items() if not r.ok]
    body: dict[str, Any] = {
        "status": "degraded" if reasons else "ok",
        "timestamp": time.time(),
        "checks": {name: r.as_json() for name, r in results.items()},
    }
    if not reasons:
        return body, 200
    body |= {
        "success": False,
        "reasons": reasons,
        "error": {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "message": "; ".join(reasons)},
    }
    return body, 503


# Monitoring polls this; it answers from a fresh probe each time and is cheap, so it has no limit.
@exempt
def detailed_health() -> Response:
    checks: dict[str, Check] = current_app.extensions[EXTENSION]
    results = {name: check() for name, check in checks.items()}
    body, status = _payload(results)
    if status != 200:
        log.warning("health degraded: %s", "; ".join(body["reasons"]))
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def database_check(app: Flask) -> Check:
    """A read from the state store (SQLite or PostgreSQL) that every upload request depends on."""

    def check() -> CheckResult:
        state: StateStore = app.extensions["state_store"]
        total = state.list_uploads(UploadQuery(limit=1))[1]
        engine = getattr(state, "engine", None)
        backend = engine.dialect.name if engine is not None else type(state).__name__
        return CheckResult(True, details={"backend": backend, "uploads": total})

    return check


def blob_store_check(app: Flask) -> Check:
    """The blob store answers (S3: a HEAD of the bucket); the local store is covered by the storage check."""

    def check() -> CheckResult:
        blobs: BlobStore = app.extensions["blob_store"]
        details = {"kind": blobs.kind, "location": blobs.location}
        try:
            blobs.check()
        except StoreUnavailable as err:
            return CheckResult(False, str(err), details)
        return CheckResult(True, details=details)

    return check


def jobs_check(app: Flask, config: ServerConfig, clock: Callable[[], float] = time.time) -> Check:
    """The background runner of this process is alive and no finalize job is stuck far past its lease."""

    def check() -> CheckResult:
        state: StateStore = app.extensions["state_store"]
        counts = state.job_counts()  # retrying: jobs given back after a failure or a full disk
        if not config.background_jobs:
            return CheckResult(True, details={"enabled": False, **counts})
        runner: JobRunner | None = app.extensions.get("job_runner")
        alive = runner is not None and runner.is_running()
        finalizing, pending = state.list_uploads(UploadQuery(state=UploadState.FINALIZING, limit=100))
        stuck_before = clock() - max(STUCK_AFTER, 10 * config.job_lease)
        stuck = [r.upload_id for r in finalizing if r.updated_at < stuck_before]
        details = {"enabled": True, "runner_alive": alive, "finalizing": pending, "stuck": stuck, **counts}
        if not alive:
            return CheckResult(False, "background job thread is not running in this process", details)
        if stuck:
            return CheckResult(
                False, f"{len(stuck)} finalize job(s) without progress for over {STUCK_AFTER:.0f}s", details
            )
        return CheckResult(True, details=details)

    return check


def init_app(app: Flask, config: ServerConfig) -> None:
    """Serve ``GET /health/detailed``; call after the stores exist (the limiter is looked up at check time)."""
    app.extensions[EXTENSION] = {
        "database": timed(database_check(app)),
        "storage": timed(storage_check(config.upload_dir, config.health_min_free)),
        "rate_limiter": timed(
            limiter_check(lambda: app.extensions.get(LIMITER_EXTENSION), config.ratelimit_storage_uri)
        ),
        "jobs": timed(jobs_check(app, config)),
        "blob_store": timed(blob_store_check(app)),
    }
    app.add_url_rule(DETAILED_HEALTH_PATH, "detailed_health", detailed_health, methods=["GET"])
