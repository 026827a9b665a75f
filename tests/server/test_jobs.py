"""Finalize jobs are rows: claimed under a lease, retried after a crash or restart, given up after N attempts."""

from __future__ import annotations

import errno
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


def test_a_full_disk_during_finalize_never_uses_up_the_failure_budget(
    queued: Upload, jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = Finalizer.run
    outage = [2 * jobs.config.job_max_attempts]  # longer than the budget could ever absorb

    def disk_full_for_a_while(self: Finalizer, upload_id: str, progress: Any, *, attempt: int) -> None:
        if outage[0]:
            outage[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_run(self, upload_id, progress, attempt=attempt)

    monkeypatch.setattr(Finalizer, "run", disk_full_for_a_while)
    while outage[0]:
        assert jobs.run_once() is True
        assert queued.status()["state"] == "finalizing"
        pass_database_time(jobs.state, 120)

    assert jobs.run_once() is True
    assert queued.status()["state"] == "complete"
    assert queued.download().data == queued.data


def test_crashed_workers_never_use_up_the_failure_budget(queued: Upload, app: Any, jobs: Any) -> None:
    state = app.extensions["state_store"]
    for n in range(2 * jobs.config.job_max_attempts):  # each claims the job and dies without a word
        assert state.claim_job(f"worker-killed-{n}", LEASE) is not None
        pass_database_time(state, LEASE + 1)

    assert jobs.run_once() is True
    assert queued.status()["state"] == "complete"


def test_giving_up_releases_the_part_file_and_the_file_can_be_uploaded_again(
    queued: Upload, jobs: Any, upload_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Finalizer, "run", broken)
    for _ in range(jobs.config.job_max_attempts):
        jobs.run_once()
        pass_database_time(jobs.state, 120)
    monkeypatch.undo()

    assert queued.status()["state"] == "failed"
    assert list((upload_dir / "parts").iterdir()) == []
    again = Upload(queued.client, queued.data, queued.chunk_size)
    assert again.init().status_code == 201  # a new upload, not a resume of the failed one
    assert again.upload_id != queued.upload_id
    again.send_all()
    again.finalize()
    assert jobs.run_once() is True
    assert again.download().data == queued.data


def test_retries_are_visible_in_metrics_and_health(
    queued: Upload, app: Any, jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Finalizer, "run", disk_full)
    jobs.run_once()

    client = app.test_client()
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'ros2_upload_finalize_retries_total{reason="disk_full"}' in metrics
    health = client.get("/health/detailed").get_json()
    assert health["checks"]["jobs"]["retrying"] == 1
