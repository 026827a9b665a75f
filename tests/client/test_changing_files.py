"""A bag that changes while it is uploaded (grows, shrinks, is replaced) is re-hashed and re-sent, never stored cut."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from core.client.events import EventKind, UploadEvent
from core.client.journal import JobState
from core.protocol import MiB
from tests.client.support import local_sha256, server_sha256

pytestmark = pytest.mark.gunicorn


def grow(path: Path) -> None:
    with path.open("ab") as fh:
        fh.write(os.urandom(300 * 1024))


def shrink(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def replace_keeping_size_and_mtime(path: Path) -> None:
    """Only the inode tells: same size, same mtime, other bytes."""
    stat = path.stat()
    fresh = path.with_suffix(".new")
    fresh.write_bytes(os.urandom(stat.st_size))
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(fresh, path)


@pytest.mark.parametrize("change", [grow, shrink, replace_keeping_size_and_mtime], ids=lambda f: f.__name__)
def test_a_bag_changed_during_upload_is_rehashed_and_the_server_holds_its_final_bytes(
    server, make_manager, make_file, events, change: Callable[[Path], None]
):
    bag = make_file(2 * MiB)
    changed: list[int] = []

    def change_once(event: UploadEvent) -> None:
        # Runs in the sending thread, after the first chunk was acknowledged.
        if event.kind is EventKind.PROGRESS and event.bytes_sent and not changed:
            changed.append(event.bytes_sent)
            change(bag)

    events.hooks.append(change_once)
    manager = make_manager(server.upload_url)
    job_id = manager.add_upload(bag)
    manager.start()
    assert manager.wait(60, job_ids=[job_id])
    record = manager.job(job_id)

    assert changed
    assert record.state is JobState.COMPLETE, record.error
    assert record.size == bag.stat().st_size
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)
    hashing = [e for e in events.of(EventKind.STATE) if e.state is JobState.HASHING]
    assert len(hashing) == 2  # hashed once more after the change was seen


def test_a_bag_that_never_stops_changing_parks_as_file_changing_and_is_not_completed(
    server, make_manager, make_file, events
):
    bag = make_file(1 * MiB)
    events.hooks.append(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent and grow(bag))
    manager = make_manager(server.upload_url)
    manager.park_delay = manager.max_park_delay = 60.0
    job_id = manager.add_upload(bag)
    manager.start()
    parked = events.wait_for(lambda e: e.state is JobState.PARKED, timeout=60)

    assert parked.blocked == "file_changing"
    assert manager.job(job_id).state is JobState.PARKED
