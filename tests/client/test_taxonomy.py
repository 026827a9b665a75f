"""Failure taxonomy, case by case: what is permanent, what is retried, and how a blocked upload says why."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import responses

from core.checksums import file_digests
from core.client.bandwidth import TokenBucket
from core.client.cli import _ProgressBar
from core.client.errors import StalledTransferError
from core.client.events import EventBus, EventKind, UploadEvent
from core.client.job import JobSettings, UploadJob
from core.client.journal import JobState, Journal
from core.client.status import blocked_label, heartbeat_uploads
from core.client.transfer import ServerClient
from core.client.watchdog import Watchdog
from core.network_manager import NO_KEY_HINT, NetworkManager
from core.protocol import (
    HEADER_RETRY_AFTER,
    BlockedReason,
    ErrorCode,
    chunk_url,
    finalize_url,
    init_url,
    upload_status_url,
)
from tests.client.support import FakeClock, init_reply
from tests.helpers.processes import wait_until

URL = "http://robot-test.invalid:8080/upload"
CHUNK = 64 * 1024


def error(code: ErrorCode, message: str = "nope", **details: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": code.value, "message": message, **details}}


def serve_rest(upload_id: str, bag: Path) -> None:
    for index in range(3):
        responses.put(chunk_url(URL, upload_id, index), json={"success": True})
    responses.post(finalize_url(URL, upload_id), status=202, json={"success": True, "state": "finalizing"})
    sha = file_digests(bag).sha256
    responses.get(upload_status_url(URL, upload_id), json={"state": "complete", "verified": True, "sha256": sha})


@pytest.fixture
def bag(make_file) -> Path:
    return make_file(3 * CHUNK)


class Harness:
    """One UploadJob against canned replies; ``sleep`` lets a test look at the journal while the job waits."""

    def __init__(self, tmp_path: Path, bag: Path) -> None:
        self.journal = Journal(tmp_path / "state")
        self.bag = bag
        self.events: list[UploadEvent] = []
        self.sleeps: list[float] = []
        self.on_sleep: list[Any] = []
        self.bus = EventBus()
        self.bus.add(self.events.append)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        for hook in self.on_sleep:
            hook(seconds)

    def job(self, client: Any = None, watchdog: Watchdog | None = None, **settings: Any) -> UploadJob:
        record, _ = self.journal.add(self.bag, 1, {})
        options = {"chunk_size": CHUNK, "max_retries": 3, **settings}
        return UploadJob(
            record,
            journal=self.journal,
            client=client or ServerClient(URL),
            settings=lambda: JobSettings(**options),
            bucket=TokenBucket(0),
            watchdog=watchdog or Watchdog(),
            events=self.bus,
            stopping=threading.Event(),
            sleep=self.sleep,
        )


@pytest.fixture
def harness(tmp_path: Path, bag: Path) -> Harness:
    return Harness(tmp_path, bag)


@responses.activate
@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_refusal_during_a_key_rotation_is_retried_and_the_upload_completes(harness, bag, status):
    responses.post(init_url(URL), status=status, json=error(ErrorCode.UNAUTHORIZED, "unknown key"))
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_rest("u1", bag)
    job = harness.job()

    record = job.run()

    assert record.state is JobState.COMPLETE
    retry = next(e for e in harness.events if e.kind is EventKind.RETRY)
    assert retry.blocked == BlockedReason.AUTH.value
    assert record.blocked is None  # cleared once the upload moved again


@responses.activate
def test_while_a_429_is_waited_out_the_journal_says_rate_limited_until_when(harness, bag):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    responses.put(chunk_url(URL, "u1", 0), status=429, headers={HEADER_RETRY_AFTER: "120"},
                  json=error(ErrorCode.RATE_LIMITED, "slow down"))  # fmt: skip
    serve_rest("u1", bag)
    job = harness.job()
    seen: list[Any] = []
    harness.on_sleep.append(lambda _s: seen.append(harness.journal.get(job.record.job_id)))

    before = time.time()
    job.run()

    waiting = next(r for r in seen if r.blocked)
    assert waiting.blocked == BlockedReason.RATE_LIMITED.value
    assert before + 119 <= waiting.blocked_until <= time.time() + 121
    assert blocked_label(waiting).startswith("rate_limited until 20")
    assert 120.0 in harness.sleeps
    beat = heartbeat_uploads([{**waiting.as_dict(), "blocked_label": blocked_label(waiting)}], [], {})
    assert beat["blocked"] == {"rate_limited": 1}
    assert beat["blocked_until"]["rate_limited"] == waiting.blocked_until
    assert beat["blocked_labels"] == [blocked_label(waiting)]
    assert beat["items"][0]["blocked_label"] == blocked_label(waiting)


@responses.activate
def test_init_retries_are_labelled_initializing_not_hashing(harness, bag):
    responses.post(init_url(URL), status=503, json=error(ErrorCode.SERVICE_UNAVAILABLE))
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_rest("u1", bag)

    harness.job().run()

    (retry,) = [e for e in harness.events if e.kind is EventKind.RETRY]
    assert retry.state is JobState.INITIALIZING
    states = [e.state for e in harness.events if e.kind is EventKind.STATE]
    assert states[:4] == [JobState.HASHING, JobState.INITIALIZING, JobState.UPLOADING, JobState.FINALIZING]


@responses.activate
def test_progress_resets_the_park_counter(harness, bag):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_rest("u1", bag)
    job = harness.job()
    job.record = harness.journal.update(job.record.job_id, parks=7, blocked="unreachable")

    record = job.run()

    assert record.parks == 0
    assert record.blocked is None


class StallingClient(ServerClient):
    """Inits fine; every chunk PUT is cut off by the watchdog, which a fake clock makes fire."""

    def __init__(self, watchdog: Watchdog, clock: FakeClock, advance: float) -> None:
        super().__init__(URL)
        self.watchdog, self.clock, self.advance = watchdog, clock, advance

    def init(self, request: Any, timeout: float) -> dict[str, Any]:
        return init_reply("u1", CHUNK)

    def put_chunk(self, upload_id: str, index: int, data: Any, **kw: Any) -> dict[str, Any]:
        self.clock.advance(self.advance)
        assert self.watchdog.check(), "the watchdog should have fired"
        msg = f"chunk {index} of {upload_id}: aborted by the watchdog (ConnectionError)"
        raise StalledTransferError(msg)


@pytest.mark.parametrize(
    ("settings", "advance", "named"),
    [
        ({"stalled_timeout": 30.0, "upload_timeout": 300.0}, 31.0, "stalled_timeout (30s without progress)"),
        ({"stalled_timeout": 0.0, "upload_timeout": 90.0}, 91.0, "upload_timeout (90s for one chunk)"),
    ],
    ids=["stalled", "deadline"],
)
def test_a_watchdog_abort_names_the_timeout_and_suggests_a_smaller_chunk(harness, settings, advance, named):
    clock = FakeClock()
    watchdog = Watchdog(clock=clock)
    job = harness.job(client=StallingClient(watchdog, clock, advance), watchdog=watchdog, max_retries=0, **settings)

    with pytest.raises(StalledTransferError) as excinfo:
        job.run()

    message = str(excinfo.value)
    assert named in message
    assert f"smaller chunk_size helps (now {CHUNK} bytes" in message


def test_the_progress_bar_shows_the_current_state_not_the_first_one(bag):
    bar = _ProgressBar(100, enabled=False)
    bar.jobs.add("j1")

    def event(state: JobState, **extra: Any) -> UploadEvent:
        return UploadEvent(kind=EventKind.STATE, job_id="j1", path=str(bag), state=state, **extra)

    bar(event(JobState.HASHING))
    bar(event(JobState.INITIALIZING, blocked="rate_limited"))
    assert bar._bar.postfix.endswith("initializing, blocked: rate_limited")
    bar(event(JobState.UPLOADING, bytes_sent=10))
    assert bar._bar.postfix.endswith(": uploading")
    bar.close()


@responses.activate
def test_a_keyless_manager_refused_by_the_server_warns_how_to_set_the_key_and_keeps_the_bag_queued(
    tmp_path, bag, monkeypatch, caplog
):
    monkeypatch.delenv("UPLOAD_API_KEY", raising=False)
    responses.post(init_url(URL), status=401, json=error(ErrorCode.UNAUTHORIZED, "an API key is required"))
    manager = NetworkManager(upload_url=URL, state_dir=tmp_path / "state")
    manager.max_retries, manager.backoff_initial, manager.park_delay = 0, 0.01, 60.0
    job_id = manager.add_upload(bag)
    caplog.set_level(logging.WARNING, logger="core.network_manager")
    manager.start()
    try:
        wait_until(lambda: manager.job(job_id).state is JobState.PARKED, 20, what="the upload to park")
        (entry,) = manager.status()
        beat = manager.heartbeat_status()
    finally:
        manager.close()

    warnings = [r.getMessage() for r in caplog.records if r.getMessage().endswith(NO_KEY_HINT)]
    assert len(warnings) == 1
    assert "api_key=" in warnings[0]
    assert "UPLOAD_API_KEY" in warnings[0]
    assert entry["state"] == JobState.PARKED.value
    assert entry["blocked"] == BlockedReason.AUTH.value
    assert entry["blocked_label"].startswith("auth until ")
    assert NO_KEY_HINT in entry["error"]
    assert beat["blocked"] == {"auth": 1}
    assert beat["queue_length"] == 1


@responses.activate
@pytest.mark.parametrize(
    "body",
    [error(ErrorCode.FILE_TOO_LARGE, "filesize exceeds 5 GiB"),
     error(ErrorCode.INVALID_FIELD, "filename has no usable name", field="filename")],
    ids=["too-large", "name-refused"],
)  # fmt: skip
def test_only_a_too_large_file_or_a_refused_name_fails_and_it_can_be_retried_or_purged(tmp_path, bag, body):
    responses.post(init_url(URL), status=400, json=body)
    manager = NetworkManager(upload_url=URL, state_dir=tmp_path / "state")
    job_id = manager.add_upload(bag)
    manager.start()
    try:
        assert manager.wait(20, job_ids=[job_id])
        (failed,) = manager.failed()
        assert failed.job_id == job_id
        assert failed.blocked == BlockedReason.FAILED.value
        assert body["error"]["message"] in (failed.error or "")

        manager.stop()
        assert manager.retry([job_id]) == [job_id]
        assert manager.job(job_id).state is JobState.QUEUED
        assert manager.failed() == []
        manager.start()
        assert manager.wait(20, job_ids=[job_id])
        assert manager.purge() == [job_id]
        assert manager.status() == []
        assert bag.exists()
    finally:
        manager.close()


@responses.activate
def test_a_checksum_mismatch_at_finalize_rehashes_and_sends_a_new_upload(harness, bag):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    for index in range(3):
        responses.put(chunk_url(URL, "u1", index), json={"success": True})
    responses.post(finalize_url(URL, "u1"), status=422, json=error(ErrorCode.CHECKSUM_MISMATCH, "md5 differs"))
    responses.post(init_url(URL), status=201, json=init_reply("u2", CHUNK))
    serve_rest("u2", bag)

    record = harness.job().run()

    assert record.state is JobState.COMPLETE
    assert record.upload_id == "u2"
    assert [e.state for e in harness.events if e.kind is EventKind.STATE].count(JobState.HASHING) == 2
