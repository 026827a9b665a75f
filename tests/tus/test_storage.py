"""How tus bytes land in the stores: the in-order sha256, concatenation, whole chunks on S3, the offset's CAS."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO

import pytest
from flask import Flask
from sqlalchemy import update

from core.server.db import tus_uploads
from core.server.tus.hashing import LIBCRYPTO, STATE_FORMAT, ExportableSha256, StreamHashes
from core.server.tus.protocol import HEADER_UPLOAD_CONCAT, HEADER_UPLOAD_LENGTH, HEADER_UPLOAD_OFFSET
from core.server.tus.store import TusRecord, TusStore
from tests.server.conftest import FakeClock
from tests.server.uploads import assert_error
from tests.tus.client import TUS, TusUpload, final_upload
from tests.tus.conftest import CHUNK


def count_full_reads(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every read of the assembled bytes that finalize makes for the sha256 (not the codec sample)."""
    blobs = app.extensions["blob_store"]
    original = blobs.open_assembled
    reads: list[int] = []

    def counted(upload_id: str, blob_id: str, length: int | None = None) -> AbstractContextManager[IO[bytes]]:
        if length is None:
            reads.append(1)
        return original(upload_id, blob_id, length)  # type: ignore[no-any-return]

    monkeypatch.setattr(blobs, "open_assembled", counted)
    return reads


def test_bytes_that_arrived_in_order_in_one_process_are_not_read_again_at_finalize(
    app: Flask, monkeypatch: pytest.MonkeyPatch, on_s3: bool
) -> None:
    """On local disk; S3 has no lock across hosts, so a hash of what arrived cannot vouch for what is stored."""
    reads = count_full_reads(app, monkeypatch)
    upload = TusUpload(app.test_client(), os.urandom(3 * CHUNK + 7))
    upload.create()
    for start, end in ((0, CHUNK), (CHUNK, None)):
        assert upload.patch(start, end).status_code == 204

    assert app.extensions["job_runner"].run_once() is True

    status = upload.status()
    assert (status["state"], status["verified"]) == ("complete", True)
    assert reads == ([1] if on_s3 else [])
    assert app.test_client().get(f"/uploads/{upload.upload_id}/file").data == upload.data


def alternate_workers(first: Flask, second: Flask, data: bytes) -> TusUpload:
    """Three PATCHes, each on the other app (two workers or hosts on the same stores), the last completing it."""
    upload = TusUpload(first.test_client(), data)
    upload.create()
    for app, (start, end) in zip(
        (first, second, first), ((0, CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, None)), strict=True
    ):
        upload.client = app.test_client()
        assert upload.patch(start, end).status_code == 204
    return upload


def test_patches_alternating_between_workers_continue_one_hash_and_finalize_reads_nothing(
    build: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, on_s3: bool
) -> None:
    """The running sha256's state travels with the offset in the tus row: any worker continues it."""
    first, second = build(), build()
    reads = count_full_reads(second, monkeypatch)
    upload = alternate_workers(first, second, os.urandom(3 * CHUNK + 7))

    assert second.extensions["job_runner"].run_once() is True

    status = upload.status()
    assert (status["state"], status["verified"]) == ("complete", True)
    assert reads == ([1] if on_s3 else [])


def test_a_restarted_server_continues_the_hash_of_the_bytes_before_the_restart(
    build: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, on_s3: bool
) -> None:
    before = build()
    upload = TusUpload(before.test_client(), os.urandom(2 * CHUNK))
    upload.create()
    assert upload.patch(0, CHUNK).status_code == 204

    after = build()
    reads = count_full_reads(after, monkeypatch)
    upload.client = after.test_client()
    assert upload.offset() == CHUNK
    assert upload.patch(CHUNK).status_code == 204
    assert after.extensions["job_runner"].run_once() is True

    assert upload.status()["verified"] is True
    assert reads == ([1] if on_s3 else [])


def test_without_exportable_hashes_another_workers_bytes_are_re_read_and_verified(
    build: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """libcrypto without SHA256_* (or failing its self-test): hashes stay in-process, finalize re-reads."""
    first, second = build(), build()
    for app in (first, second):
        app.extensions["tus_service"].hashes = StreamHashes(lib=None)
    reads = count_full_reads(second, monkeypatch)
    upload = alternate_workers(first, second, os.urandom(3 * CHUNK + 7))

    assert second.extensions["job_runner"].run_once() is True

    assert upload.status()["verified"] is True
    assert reads == [1]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param({"hash_format": "openssl-sha256-ctx-v0/112/big"}, id="another-format"),
        pytest.param({"hash_state": b"\0" * 112}, id="not-a-state-at-this-offset"),
        pytest.param({"hash_state": None, "hash_format": None}, id="absent"),
    ],
)
@pytest.mark.blob_stores("local")
def test_a_stored_hash_state_that_does_not_validate_is_not_trusted(
    app: Flask, monkeypatch: pytest.MonkeyPatch, on_s3: bool, tamper: dict[str, object]
) -> None:
    reads = count_full_reads(app, monkeypatch)
    upload = TusUpload(app.test_client(), os.urandom(2 * CHUNK + 3))
    upload.create()
    assert upload.patch(0, CHUNK).status_code == 204
    store = app.extensions["tus_service"].store
    assert store.get(upload.upload_id).hash_state is not None
    with store.engine.begin() as conn:
        conn.execute(update(tus_uploads).where(tus_uploads.c.upload_id == upload.upload_id).values(**tamper))

    assert upload.patch(CHUNK).status_code == 204
    assert app.extensions["job_runner"].run_once() is True

    assert upload.status()["verified"] is True
    assert reads == [1]


def test_the_hash_state_round_trips_through_the_state_database(app: Flask) -> None:
    """Both engines store the state bytes as given (BLOB / BYTEA) with its format, beside the offset."""
    store = app.extensions["tus_service"].store
    upload = TusUpload(app.test_client(), os.urandom(2 * CHUNK))
    upload.create()
    running = ExportableSha256(LIBCRYPTO)
    running.update(upload.data[:CHUNK])
    state = (STATE_FORMAT, running.export())

    assert store.advance(upload.upload_id, 0, CHUNK, app.extensions["upload_service"].clock(), hash_state=state)

    assert store.get(upload.upload_id).hash_state == state


def test_a_patch_ending_inside_a_chunk_is_kept_on_disk_and_cut_at_the_chunk_on_s3(app: Flask, on_s3: bool) -> None:
    upload = TusUpload(app.test_client(), os.urandom(3 * CHUNK))
    upload.create()

    reply = upload.patch(0, CHUNK + 10)

    assert reply.status_code == 204
    offset = int(reply.headers[HEADER_UPLOAD_OFFSET])
    assert offset == (CHUNK if on_s3 else CHUNK + 10)
    if on_s3:  # a body that cannot complete its chunk is refused rather than answered with no progress
        error = assert_error(upload.patch(offset, offset + 10), 400, "chunk_size_mismatch")
        assert error["chunk_size"] == CHUNK
    assert upload.patch(offset).status_code == 204
    assert app.extensions["job_runner"].run_once() is True
    assert app.test_client().get(f"/uploads/{upload.upload_id}/file").data == upload.data


@pytest.fixture
def partials(app: Flask) -> list[TusUpload]:
    parts = []
    for size in (CHUNK + 3, 2 * CHUNK, 5):
        part = TusUpload(app.test_client(), os.urandom(size))
        assert part.create(declare_sha256=False, **{HEADER_UPLOAD_CONCAT: "partial"}).status_code == 201
        parts.append(part)
    return parts


@pytest.mark.blob_stores("local")  # concatenation reads partial uploads back
def test_partial_uploads_concatenate_into_one_verified_file(
    app: Flask, partials: list[TusUpload], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_full_reads(app, monkeypatch)
    for part in reversed(partials):  # in any order, as parallel uploads finish
        assert part.patch(0).status_code == 204
        assert part.head().headers[HEADER_UPLOAD_CONCAT] == "partial"
    assert app.extensions["job_runner"].run_once() is False  # a complete partial upload is not finalized
    data = b"".join(part.data for part in partials)

    created = final_upload(app.test_client(), partials, data)

    assert created.status_code == 201
    final = TusUpload(app.test_client(), data, url="/files/" + created.headers["Location"].rsplit("/", 1)[-1])
    head = final.head()
    assert head.headers[HEADER_UPLOAD_OFFSET] == head.headers[HEADER_UPLOAD_LENGTH] == str(len(data))
    assert head.headers[HEADER_UPLOAD_CONCAT] == "final;" + " ".join(part.url for part in partials)
    assert app.extensions["job_runner"].run_once() is True
    status = final.status()
    assert (status["state"], status["verified"], status["filename"]) == ("complete", True, "joined.mcap")
    assert app.test_client().get(f"/uploads/{final.upload_id}/file").data == data
    assert reads == []  # the copy hashed as it went
    assert [part.head().status_code for part in partials] == [410, 410, 410]  # their bytes now live in the final
    assert final.patch(0, body=b"").status_code == 403


@pytest.mark.blob_stores("local")  # concatenation reads partial uploads back
def test_joined_partial_uploads_are_not_listed_as_failures_and_are_pruned_later(
    app: Flask, partials: list[TusUpload], clock: FakeClock
) -> None:
    """Operators read aborted rows as failures: the partials of a final upload are left out, then deleted."""
    for part in partials:
        assert part.patch(0).status_code == 204
    unjoined = TusUpload(app.test_client(), b"abc")  # a partial upload no final upload took: still listed
    assert unjoined.create(declare_sha256=False, **{HEADER_UPLOAD_CONCAT: "partial"}).status_code == 201
    data = b"".join(part.data for part in partials)
    created = final_upload(app.test_client(), partials, data)
    final_id = created.headers["Location"].rsplit("/", 1)[-1]
    assert app.extensions["job_runner"].run_once() is True

    listing = app.test_client().get("/uploads").get_json()
    assert {u["upload_id"] for u in listing["uploads"]} == {final_id, unjoined.upload_id}
    assert listing["total"] == 2
    aborted = app.test_client().get("/uploads?state=aborted").get_json()
    assert (aborted["uploads"], aborted["total"]) == ([], 0)
    state = app.test_client().get("/dashboard/api/state").get_json()["uploads"]
    assert {r["upload_id"] for r in state["items"]} == {final_id, unjoined.upload_id}
    assert state["counts"]["aborted"] == 0
    assert partials[0].status()["state"] == "aborted"  # still there when asked for by id, until pruned

    clock.advance(app.extensions["server_config"].state_retention + 1)
    app.extensions["upload_service"].sweep()

    assert [part.client.get(f"/upload/{part.upload_id}").status_code for part in partials] == [404, 404, 404]
    assert app.test_client().get(f"/uploads/{final_id}/file").data == data


@pytest.mark.blob_stores("local")  # concatenation reads partial uploads back
def test_a_final_upload_of_an_unfinished_partial_is_409(app: Flask, partials: list[TusUpload]) -> None:
    partials[0].patch(0)
    created = final_upload(app.test_client(), partials, b"")
    assert_error(created, 409, "conflict")
    assert partials[0].offset() == len(partials[0].data)


@pytest.mark.blob_stores("s3")
def test_concatenation_is_refused_where_it_is_not_advertised(app: Flask, on_s3: bool) -> None:
    sent = {**TUS, HEADER_UPLOAD_LENGTH: "10", HEADER_UPLOAD_CONCAT: "partial"}
    assert_error(app.test_client().post("/files/", headers=sent), 400, "invalid_field")


def test_the_offset_moves_once_from_each_place(app: Flask) -> None:
    """The compare-and-set two racing PATCHes (two workers, two hosts) meet: only one advances from an offset."""
    upload = TusUpload(app.test_client(), os.urandom(2 * CHUNK))
    upload.create()
    store: TusStore = app.extensions["tus_service"].store
    now = app.extensions["upload_service"].clock()

    assert store.advance(upload.upload_id, 0, 10, now) is True
    assert store.advance(upload.upload_id, 0, 20, now) is False
    record = store.get(upload.upload_id)
    assert isinstance(record, TusRecord)
    assert record.upload_offset == 10


def test_a_terminated_upload_takes_no_more_bytes_even_at_its_offset(app: Flask) -> None:
    upload = TusUpload(app.test_client(), os.urandom(2 * CHUNK))
    upload.create()
    store: TusStore = app.extensions["tus_service"].store
    assert upload.delete().status_code == 204
    assert store.advance(upload.upload_id, 0, CHUNK, app.extensions["upload_service"].clock()) is False


def test_two_patches_racing_at_one_offset_store_one_body_whole(app: Flask) -> None:
    """Two clients (or a resumed client and its dead request) PATCH the same offset with different bytes."""
    upload = TusUpload(app.test_client(), os.urandom(3 * CHUNK))
    upload.create(declare_sha256=False)  # which body wins is not known in advance
    bodies = [os.urandom(2 * CHUNK), os.urandom(2 * CHUNK)]
    start = threading.Barrier(2)
    replies: list[int] = [0, 0]

    def send(which: int) -> None:
        racer = TusUpload(app.test_client(), upload.data, url=upload.url)
        start.wait()
        replies[which] = racer.patch(0, body=bodies[which]).status_code

    threads = [threading.Thread(target=send, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(replies) == [204, 409]
    winner = bodies[replies.index(204)]
    assert upload.offset() == 2 * CHUNK
    rest = os.urandom(CHUNK)
    assert upload.patch(2 * CHUNK, body=rest).status_code == 204
    assert app.extensions["job_runner"].run_once() is True
    assert app.test_client().get(f"/uploads/{upload.upload_id}/file").data == winner + rest
