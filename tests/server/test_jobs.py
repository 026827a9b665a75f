"""Finalize jobs are rows: claimed under a lease, retried after a crash or restart, given up after N attempts."""

from __future__ import annotations

import os
from typing import Any

import pytest

from core.server.finalize import Finalizer
from tests.helpers.processes import wait_until
from tests.helpers.state import pass_database_time
from tests.server.conftest import CHUNK, FakeClock
from tests.server.uploads import Upload

LEASE = 30.0


@pytest.fixture
def queued(new_upload: Any) -> Upload:
    """An upload with all chunks sent and its finalize job queued."""
    upload: Upload = new_upload(os.urandom(3 * CHUNK))
    upload.init()
    upload.send_all()
    assert upload.finalize().status_code == 202
    return upload


def test_job_of_a_killed_worker_is_reclaimed_after_restart(
    queued: Upload, app: Any, make_app: Any, clock: FakeClock
) -> None:
    app.extensions["state_store"].claim_job("worker-that-was-killed", LEASE)
    restarted = make_app().extensions["job_runner"]

    assert restarted.run_once() is False  # the dead worker's lease still runs
    pass_database_time(app.extensions["state_store"], LEASE + 1)
    assert restarted.run_once() is True

    status = queued.status()
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert queued.download().data == queued.data


def test_job_resumes_when_a_crash_left_the_file_already_moved(queued: Upload, app: Any, jobs: Any) -> None:
    app.extensions["blob_store"].store_part(queued.upload_id, queued.upload_id)

    assert jobs.run_once() is True

    assert queued.status()["state"] == "complete"
    assert queued.download().data == queued.data


def test_failed_attempt_is_retried_later(
    queued: Upload, jobs: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = Finalizer.run
    calls = []

    def flaky(self: Finalizer, upload_id: str, progress: Any, *, attempt: int) -> None:
        calls.append(upload_id)
        if len(calls) == 1:
            raise OSError("transient I/O error")
        real_run(self, upload_id, progress, attempt=attempt)

    monkeypatch.setattr(Finalizer, "run", flaky)

    assert jobs.run_once() is True
    assert queued.status()["state"] == "finalizing"
    assert jobs.run_once() is False  # backing off
    pass_database_time(jobs.state, 120)
    assert jobs.run_once() is True
    assert queued.status()["state"] == "complete"


def test_job_failing_every_attempt_marks_the_upload_failed(
    queued: Upload, jobs: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise OSError("disk broken")

    monkeypatch.setattr(Finalizer, "run", broken)

    for _ in range(jobs.config.job_max_attempts + 1):
        pass_database_time(jobs.state, 120)
        jobs.run_once()

    status = queued.status()
    assert status["state"] == "failed"
    assert status["error"]["code"] == "internal_error"
    assert jobs.run_once() is False


def test_background_thread_finalizes_without_being_driven(make_app: Any) -> None:
    app = make_app(background_jobs=True)
    upload = Upload(app.test_client(), os.urandom(4 * CHUNK), CHUNK)
    upload.init()
    upload.send_all()

    upload.finalize()

    wait_until(lambda: upload.status()["state"] == "complete", timeout=20, what="background finalize")
    assert upload.download().data == upload.data


def test_file_moved_by_a_crashed_attempt_is_kept_raw_without_orphans(
    new_upload: Any, app: Any, jobs: Any, upload_dir: Any
) -> None:
    upload = new_upload(b"compressible " * 1000)
    upload.init(compression=True)
    upload.send_all()
    upload.finalize()
    app.extensions["blob_store"].store_part(upload.upload_id, upload.upload_id)

    jobs.run_once()

    status = upload.status()
    assert (status["state"], status["codec"]) == ("complete", "none")
    stored = [p.name for p in (upload_dir / "store").rglob("*") if p.is_file()]
    assert sorted(stored) == [upload.upload_id, f"{upload.upload_id}.json"]
