"""Bounded robot state: the heartbeat's size does not depend on history, the journal prunes, stop() joins."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from core.client.events import EventKind, UploadEvent
from core.client.journal import JobState, Journal
from core.heartbeat import HeartbeatReporter
from core.network_manager import NetworkManager
from core.protocol import KiB, MiB

URL = "http://robot-test.invalid:8080/upload"
# The server refuses heartbeat bodies above 64 KiB; ours must stay far below that whatever the history.
HEARTBEAT_BUDGET = 24 * KiB


def fill_journal(state: Path, bags: Path, count: int, state_of: JobState, *, updated: float | None = None) -> None:
    journal = Journal(state)
    try:
        for n in range(count):
            bag = bags / f"robot1_2026-12-01_{n:05d}_{state_of.value}.mcap"
            bag.write_bytes(b"x")
            record, _ = journal.add(bag, 5, {"source": "robot1", "bag": bag.stem, "topics": {"/imu": 1000}})
            error = "x" * 2000 if state_of is not JobState.COMPLETE else None
            journal.update(record.job_id, state=state_of, size=1, bytes_sent=1, sha256="0" * 64,
                           upload_id=f"up-{n}", error=error)  # fmt: skip
        if updated is not None:
            with journal._transaction() as db:
                db.execute("UPDATE jobs SET updated = ?", (updated,))
    finally:
        journal.close()


@pytest.fixture
def bags(tmp_path: Path) -> Path:
    folder = tmp_path / "bags"
    folder.mkdir()
    return folder


def heartbeat_body(manager: NetworkManager) -> bytes:
    reporter = HeartbeatReporter(URL, "robot1", sources={"uploads": manager.heartbeat_status}, verify=True)
    return json.dumps(reporter.payload()).encode()


def test_the_heartbeat_stays_small_after_thousands_of_uploads(tmp_path: Path, bags: Path) -> None:
    state = tmp_path / "state"
    fill_journal(state, bags, 20, JobState.QUEUED)
    manager = NetworkManager(upload_url=URL, state_dir=state)
    small = len(heartbeat_body(manager))
    manager.close()
    fill_journal(state, bags, 3000, JobState.COMPLETE)
    fill_journal(state, bags, 200, JobState.FAILED)
    manager = NetworkManager(upload_url=URL, state_dir=state)
    try:
        body = heartbeat_body(manager)
        uploads = json.loads(body)["uploads"]
    finally:
        manager.close()

    assert len(body) < HEARTBEAT_BUDGET, len(body)
    assert len(body) < 3 * small  # the same order of size as with no history at all
    assert uploads["queue_length"] == 20
    assert uploads["counts"] == {"queued": 20, "complete": 3000, "failed": 200}
    assert uploads["failed"] == 200
    assert len(uploads["items"]) == 20 + manager.heartbeat_recent


def test_a_long_offline_queue_is_counted_not_listed(tmp_path: Path, bags: Path) -> None:
    state = tmp_path / "state"
    fill_journal(state, bags, 1000, JobState.PARKED)
    manager = NetworkManager(upload_url=URL, state_dir=state)
    try:
        body = heartbeat_body(manager)
    finally:
        manager.close()

    uploads = json.loads(body)["uploads"]
    assert len(body) < HEARTBEAT_BUDGET, len(body)
    assert uploads["queue_length"] == 1000
    assert len(uploads["items"]) < 100


def test_complete_entries_are_pruned_after_the_retention_but_failed_ones_stay(tmp_path: Path, bags: Path) -> None:
    state = tmp_path / "state"
    week_ago = time.time() - 8 * 24 * 3600
    fill_journal(state, bags, 30, JobState.COMPLETE, updated=week_ago)
    fill_journal(state, bags, 3, JobState.FAILED, updated=week_ago)
    fill_journal(state, bags, 5, JobState.COMPLETE)
    manager = NetworkManager(upload_url=URL, state_dir=state)
    try:
        manager.start()  # prunes on start, then every PRUNE_INTERVAL
        counts = manager._journal.counts()
    finally:
        manager.close()

    assert counts == {"complete": 5, "failed": 3}


def test_a_complete_entry_whose_retention_has_not_acted_is_never_pruned(tmp_path: Path, bags: Path) -> None:
    state = tmp_path / "state"
    fill_journal(state, bags, 1, JobState.COMPLETE, updated=0.0)
    journal = Journal(state)
    (record,) = journal.jobs()
    journal.update(record.job_id, retention_pending=True, retention="keep")
    with journal._transaction() as db:
        db.execute("UPDATE jobs SET updated = 0")

    assert journal.prune_complete(time.time()) == 0
    journal.close()


def test_stop_waits_for_every_thread_and_reports_none_left(server, make_manager, make_file) -> None:
    # Threads of earlier tests in this process (in-process servers' job runners, say) are not the manager's.
    before = set(threading.enumerate())
    manager = make_manager(server.upload_url, bandwidth_limit=1 * MiB, chunk_parallelism=2)
    manager.add_upload(make_file(8 * MiB))
    manager.start()
    deadline = time.monotonic() + 30
    while not any(s["state"] == "uploading" and s["bytes_sent"] for s in manager.status()):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    left = manager.stop(timeout=5)

    assert left == []
    assert [t.name for t in threading.enumerate() if t not in before] == []
    (entry,) = manager.status()
    assert entry["state"] != JobState.COMPLETE.value  # resumable, not lost


def test_stop_names_a_thread_it_could_not_end_and_close_keeps_the_journal_open(
    tmp_path: Path, make_file, events
) -> None:
    release = threading.Event()

    def block_in_listener(event: UploadEvent) -> None:
        if event.kind is EventKind.STATE and event.state is JobState.HASHING:
            release.wait(30)  # a listener that does not return: the job thread cannot end

    manager = NetworkManager(upload_url=URL, state_dir=tmp_path / "state")
    manager.add_listener(block_in_listener)
    manager.add_upload(make_file(64 * KiB))
    manager.start()
    deadline = time.monotonic() + 30
    while not manager._threads():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)

    left = manager.stop(timeout=0.5)
    manager.close()
    still_readable = manager.status()  # the journal was not closed under the running thread
    release.set()
    for thread in manager._threads():
        thread.join(10)

    assert len(left) == 1
    assert left[0].startswith("upload-")
    assert len(still_readable) == 1
    manager._journal.close()
