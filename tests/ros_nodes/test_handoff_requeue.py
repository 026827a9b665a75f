"""The hand-off ledger never gives a bag up: anything not verified is queued again, at start and periodically."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from ros_nodes.core.handoff import BagInfo, Handoff
from ros_nodes.core.ledger import FAILED, QUEUED, VERIFIED, Ledger


class FakeManager:
    """A NetworkManager's journal in miniature: jobs with states, ``retry`` of failed ones, and listeners."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.retried: list[str] = []
        self._ids = itertools.count()

    def add_upload(self, file_path: str, priority: int = 5, metadata: dict[str, Any] | None = None) -> str:
        job_id = f"job-{next(self._ids)}"
        self.jobs[job_id] = {"job_id": job_id, "path": file_path, "state": "queued", "metadata": metadata or {}}
        return job_id

    def status(self) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    def retry(self, job_ids: list[str]) -> list[str]:
        again = [j for j in job_ids if self.jobs.get(j, {}).get("state") == "failed"]
        for job_id in again:
            self.jobs[job_id]["state"] = "queued"
        self.retried.extend(again)
        return again


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bag(tmp_path: Path) -> BagInfo:
    folder = tmp_path / "bags" / "s_0"
    folder.mkdir(parents=True)
    (folder / "s_0.mcap").write_bytes(b"m" * 100)
    (folder / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    return BagInfo(bag="s_0", path=folder, robot_id="r1", session="s")


def state_of(ledger: Ledger) -> dict[str, str]:
    return {Path(e.file).name: e.state for e in ledger.entries()}


def test_a_failed_upload_is_queued_again_on_the_next_start(tmp_path: Path, bag: BagInfo) -> None:
    manager = FakeManager()
    ledger = Ledger(tmp_path / "handoff.sqlite")
    first = Handoff(manager, ledger)
    storage_job, _meta_job = first.submit(bag)
    manager.jobs[storage_job]["state"] = "failed"
    first.job_finished(storage_job, verified=False)
    assert state_of(ledger)["s_0.mcap"] == FAILED

    restarted = Handoff(manager, ledger)
    restarted.reconcile(manager)

    assert manager.retried == [storage_job]  # the same journal row, not a new one per sweep
    assert state_of(ledger)["s_0.mcap"] == QUEUED


def test_a_job_the_uploader_no_longer_knows_is_queued_again(tmp_path: Path, bag: BagInfo) -> None:
    manager = FakeManager()
    ledger = Ledger(tmp_path / "handoff.sqlite")
    handoff = Handoff(manager, ledger)
    storage_job, meta_job = handoff.submit(bag)
    del manager.jobs[storage_job]  # purged from, or pruned out of, the uploader's journal

    assert handoff.requeue(manager) == 1

    new_jobs = set(manager.jobs) - {meta_job}
    assert len(new_jobs) == 1
    assert manager.jobs[new_jobs.pop()]["path"].endswith("s_0.mcap")


def test_unverified_files_are_queued_again_periodically(tmp_path: Path, bag: BagInfo) -> None:
    manager = FakeManager()
    clock = Clock()
    ledger = Ledger(tmp_path / "handoff.sqlite")
    handoff = Handoff(manager, ledger, requeue_interval=300.0, clock=clock)
    storage_job, meta_job = handoff.submit(bag)
    manager.jobs[storage_job]["state"] = "failed"
    handoff.job_finished(storage_job, verified=False)
    manager.jobs[meta_job]["state"] = "complete"

    clock.now = 299.0
    assert handoff.maybe_requeue() == 0
    clock.now = 301.0
    assert handoff.maybe_requeue() == 1

    assert manager.retried == [storage_job]
    # The verdict missed by the listener is caught up on the way.
    assert state_of(ledger) == {"s_0.mcap": QUEUED, "metadata.yaml": VERIFIED}


def test_a_verified_file_is_never_queued_again(tmp_path: Path, bag: BagInfo) -> None:
    manager = FakeManager()
    ledger = Ledger(tmp_path / "handoff.sqlite")
    handoff = Handoff(manager, ledger)
    jobs = handoff.submit(bag)
    for job_id in jobs:
        manager.jobs[job_id]["state"] = "complete"
        handoff.job_finished(job_id, verified=True)
    manager.jobs.clear()  # pruned from the uploader's journal later

    assert handoff.requeue(manager) == 0
    assert set(state_of(ledger).values()) == {VERIFIED}


def test_the_recorder_queues_a_failed_split_again_when_it_starts(config, traffic) -> None:
    from ros_nodes.core.recorder import Recorder
    from tests.ros_nodes.support import record_all

    manager = FakeManager()
    recorder = record_all(config, traffic, uploader=manager)
    storage_job = next(j for j, job in manager.jobs.items() if job["path"].endswith(".mcap"))
    manager.jobs[storage_job]["state"] = "failed"
    recorder.handoff.job_finished(storage_job, verified=False)
    recorder.close()

    restarted = Recorder(config, uploader=manager)
    restarted.recover()
    restarted.close()

    assert manager.retried == [storage_job]
    assert manager.jobs[storage_job]["state"] == "queued"
