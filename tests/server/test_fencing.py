"""Fenced finalize jobs and the races of issue 11, on both engines, with two app instances on one storage root.

Each scenario reproduces a loss found in review: a late attempt deleting a completed upload's file
(takeover during store), two attempts writing one staging file (takeover during compression), the
sweep expiring an upload that just had a chunk acknowledged, and dedup answering ``complete`` from a
record whose stored file is gone. A takeover is what happens when an attempt stalls past its lease:
the test lets database time pass instead of waiting.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from flask import Flask

from core.protocol import Codec
from core.server import finalize
from core.server.blob_store import BlobStore
from core.server.blobs import PartMissing
from core.server.jobs import JobRunner
from tests.helpers.state import pass_database_time
from tests.server.conftest import CHUNK, FakeClock
from tests.server.uploads import Upload

LEASE = 30.0


@pytest.fixture
def instances(make_app: Callable[..., Flask], state_store_uri: str) -> tuple[Flask, Flask]:
    """Two app instances (two workers or hosts) on one storage root and one state database."""
    return make_app(state_store_uri=state_store_uri), make_app(state_store_uri=state_store_uri)


def runner(app: Flask) -> JobRunner:
    return app.extensions["job_runner"]  # type: ignore[no-any-return]


def dna(size: int) -> bytes:
    """Random bytes over four letters: compresses to about a quarter, and in many zstd blocks."""
    return bytes(b"acgt"[byte & 3] for byte in os.urandom(size))


def queued_upload(app: Flask, data: bytes, *, chunk_size: int = CHUNK, **init: Any) -> Upload:
    upload = Upload(app.test_client(), data, chunk_size)
    assert upload.init(**init).status_code == 201
    upload.send_all()
    assert upload.finalize().status_code == 202
    return upload


def take_over(stalled: Flask, other: Flask) -> None:
    """The stalled attempt's lease runs out and the other instance claims and finishes the job."""
    pass_database_time(stalled.extensions["state_store"], LEASE + 1)
    assert runner(other).run_once() is True


def stored_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "store").rglob("*") if p.is_file())


def test_takeover_during_store_never_deletes_the_completed_file(
    instances: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = instances
    upload = queued_upload(first, os.urandom(3 * CHUNK), compression="none")
    blobs: BlobStore = first.extensions["blob_store"]
    real_store_part = blobs.store_part

    def store_then_stall(upload_id: str, blob_id: str) -> Path:
        moved = real_store_part(upload_id, blob_id)
        take_over(first, second)  # A stalls right after the move; B completes from the moved file
        return moved

    monkeypatch.setattr(blobs, "store_part", store_then_stall)

    assert runner(first).run_once() is True  # A wakes up: its attempt is stale

    status = upload.status()
    assert (status["state"], status["verified"]) == ("complete", True)
    assert upload.download().data == upload.data
    root = first.extensions["server_config"].upload_dir
    assert stored_files(root) == sorted([upload.upload_id, f"{upload.upload_id}.json"])


def test_received_bytes_another_attempt_just_stored_are_never_declared_lost(
    instances: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure of test_two_app_instances_racing_for_one_job_store_one_intact_copy: the stale
    attempt renamed the part into the store while the current one was about to; the current one
    found no part, declared the upload lost and deleted the stored copy with it."""
    first, _ = instances
    upload = queued_upload(first, os.urandom(3 * CHUNK), compression="none")
    blobs: BlobStore = first.extensions["blob_store"]
    real_assemble = blobs.assemble

    def overtaken(upload_id: str, blob_id: str, **kwargs: Any) -> bool:
        monkeypatch.setattr(blobs, "assemble", real_assemble)
        blobs.store_part(upload_id, blob_id)  # the other attempt's rename, as this one looks
        raise PartMissing(upload_id, "its part file disappeared before it was stored")

    monkeypatch.setattr(blobs, "assemble", overtaken)

    assert runner(first).run_once() is True
    assert upload.status()["state"] == "finalizing"  # retried, not aborted
    pass_database_time(first.extensions["state_store"], 3600)
    assert runner(first).run_once() is True

    status = upload.status()
    assert (status["state"], status["verified"]) == ("complete", True)
    assert upload.download().data == upload.data


def test_takeover_during_compression_keeps_the_stored_copy_intact(
    instances: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalls while compressing; B takes over and stalls too; A wakes first and finishes, then B.

    gzip writes its output as it goes, so a truncation by the other attempt leaves a hole.
    """
    first, second = instances
    upload = queued_upload(first, dna(4 * 1024 * 1024), compression="gzip", chunk_size=256 * 1024)
    real_iter = finalize.iter_decompressed
    b_is_midway, a_is_done = threading.Event(), threading.Event()
    taken_over: list[threading.Thread] = []

    def read_with_stalls(source: IO[bytes], codec: Codec) -> Iterator[bytes]:
        for n, piece in enumerate(real_iter(source, codec)):
            if n == 20 and not taken_over:  # A has written compressed blocks when it stalls
                pass_database_time(first.extensions["state_store"], LEASE + 1)
                taken_over.append(threading.Thread(target=runner(second).run_once))
                taken_over[0].start()
                assert b_is_midway.wait(30)
            elif n == 2 and threading.current_thread() is not threading.main_thread():
                b_is_midway.set()  # B has staged two pieces when it stalls in turn
                assert a_is_done.wait(30)
            yield piece

    monkeypatch.setattr(finalize, "iter_decompressed", read_with_stalls)

    assert runner(first).run_once() is True  # A wakes up and finishes its (stale) attempt
    # B holds the job: A must not have completed the upload (before, it stored a file B had truncated).
    assert upload.status()["state"] == "finalizing"
    a_is_done.set()
    taken_over[0].join(30)

    status = upload.status()
    assert (status["state"], status["codec"], status["verified"]) == ("complete", "gzip", True)
    assert upload.download().data == upload.data  # decompresses: nobody truncated the other's file
    root = first.extensions["server_config"].upload_dir
    assert list((root / "staging").iterdir()) == []  # A's staging file went with its attempt


def test_a_chunk_acknowledged_while_the_sweep_runs_keeps_the_upload_alive(
    make_app: Callable[..., Flask], state_store_uri: str, clock: FakeClock
) -> None:
    app = make_app(state_store_uri=state_store_uri, upload_ttl=60.0)
    upload = Upload(app.test_client(), os.urandom(3 * CHUNK), CHUNK)
    upload.init()
    assert upload.send(0).status_code in (200, 201)
    clock.advance(61)
    service = app.extensions["upload_service"]
    real_stale = service.state.stale_uploads
    calls = []

    def listing_then_chunk(idle_before: float, limit: int = 100) -> list[Any]:
        listed = real_stale(idle_before, limit)
        if not calls:  # between the sweep's listing and its transition, chunk 1 arrives and is acknowledged
            calls.append(listed)
            assert upload.send(1).status_code in (200, 201)
        return listed

    service.state.stale_uploads = listing_then_chunk

    assert service.sweep() == 0

    assert [r.upload_id for r in calls[0]] == [upload.upload_id]  # the race did happen
    status = upload.status()
    assert (status["state"], status["received"]) == ("uploading", [0, 1])
    assert upload.send(2).status_code in (200, 201)


def test_dedup_never_links_to_a_stored_file_that_is_missing(
    make_app: Callable[..., Flask], state_store_uri: str
) -> None:
    app = make_app(state_store_uri=state_store_uri)
    data = os.urandom(3 * CHUNK)
    original = queued_upload(app, data, compression="none")
    assert runner(app).run_once() is True
    blobs: BlobStore = app.extensions["blob_store"]
    blobs.blob_path(original.upload_id, Codec.NONE).unlink()  # the stored file is lost (disk, operator, bug)

    again = Upload(app.test_client(), data, CHUNK)
    reply = again.init()

    assert reply.status_code == 201
    assert (reply.get_json()["state"], reply.get_json()["deduplicated"]) == ("uploading", False)
    again.send_all()
    assert again.finalize().status_code == 202
    assert runner(app).run_once() is True
    assert again.download().data == data
