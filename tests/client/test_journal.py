"""The persistent queue: durable before add returns, ordered by priority then arrival, survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.client.journal import JobState, Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "state")


def test_jobs_survive_reopening_the_journal(tmp_path: Path, journal: Journal):
    record, created = journal.add(Path("/bags/a.mcap"), 3, {"source": "robot1"})
    journal.update(record.job_id, state=JobState.UPLOADING, upload_id="u1", bytes_sent=4096)
    journal.close()

    reopened = Journal(tmp_path / "state").get(record.job_id)

    assert created
    assert reopened.state is JobState.UPLOADING
    assert reopened.upload_id == "u1"
    assert reopened.bytes_sent == 4096
    assert reopened.metadata == {"source": "robot1"}


def test_lower_priority_number_comes_first_and_ties_keep_arrival_order(journal: Journal):
    for name, priority in [("c", 5), ("a", 1), ("d", 5), ("b", 1), ("e", 9)]:
        journal.add(Path(f"/bags/{name}.mcap"), priority, None)

    assert [Path(j.path).stem for j in journal.jobs()] == ["a", "b", "c", "d", "e"]


def test_adding_an_unfinished_path_again_returns_the_same_job(journal: Journal):
    first, _ = journal.add(Path("/bags/a.mcap"), 1, None)
    again, created = journal.add(Path("/bags/a.mcap"), 1, None)

    assert not created
    assert again.job_id == first.job_id


def test_a_finished_path_can_be_queued_again(journal: Journal):
    first, _ = journal.add(Path("/bags/a.mcap"), 1, None)
    journal.update(first.job_id, state=JobState.COMPLETE)

    second, created = journal.add(Path("/bags/a.mcap"), 1, None)

    assert created
    assert second.job_id != first.job_id


def test_ended_jobs_are_not_runnable_and_parked_ones_wait_for_their_time(journal: Journal):
    done, _ = journal.add(Path("/bags/done.mcap"), 1, None)
    parked, _ = journal.add(Path("/bags/parked.mcap"), 1, None)
    queued, _ = journal.add(Path("/bags/queued.mcap"), 1, None)
    journal.update(done.job_id, state=JobState.COMPLETE)
    journal.update(parked.job_id, state=JobState.PARKED, next_attempt=2000.0)

    assert [j.job_id for j in journal.runnable(1000.0, set())] == [queued.job_id]
    assert [j.job_id for j in journal.runnable(2000.0, {queued.job_id})] == [parked.job_id]


def test_unknown_columns_are_refused(journal: Journal):
    record, _ = journal.add(Path("/bags/a.mcap"), 1, None)

    with pytest.raises(ValueError, match="unknown journal columns"):
        journal.update(record.job_id, state_typo="x")
