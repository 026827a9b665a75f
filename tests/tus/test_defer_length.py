"""creation-defer-length on every state store and blob store: the length arrives in a PATCH, once."""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import pytest
from flask import Flask

from core.server.tus.protocol import HEADER_UPLOAD_DEFER_LENGTH, HEADER_UPLOAD_LENGTH, HEADER_UPLOAD_OFFSET
from tests.server.conftest import FakeClock
from tests.server.test_storage_bounds import FakeUsage
from tests.server.uploads import assert_error
from tests.tus.client import TusUpload
from tests.tus.conftest import CHUNK
from tests.tus.test_protocol import finish

GiB = 1024**3


def deferred(app: Flask, data: bytes) -> TusUpload:
    upload = TusUpload(app.test_client(), data)
    assert upload.create(defer_length=True).status_code == 201
    return upload


def dashboard_rows(app: Flask) -> list[dict[str, Any]]:
    """The dashboard's Uploads table, as its state JSON gives it."""
    state = app.test_client().get("/dashboard/api/state").get_json()
    return list(state["uploads"]["items"])


def declare(upload: TusUpload, length: int, offset: int, end: int | None = None) -> Any:
    """A PATCH of the bytes [offset, end) that carries Upload-Length."""
    return upload.patch(offset, end, **{HEADER_UPLOAD_LENGTH: str(length)})


def test_the_length_sent_with_the_last_patch_completes_a_verified_upload(app: Flask) -> None:
    """The tail chunk is shorter than a chunk: it can only be stored once the length is known (S3: whole chunks)."""
    data = os.urandom(3 * CHUNK + 100)
    upload = deferred(app, data)

    head = upload.head()
    assert head.headers[HEADER_UPLOAD_DEFER_LENGTH] == "1"
    assert HEADER_UPLOAD_LENGTH not in head.headers
    assert upload.patch(0, 2 * CHUNK).status_code == 204
    assert upload.head().headers[HEADER_UPLOAD_DEFER_LENGTH] == "1"

    reply = declare(upload, len(data), 2 * CHUNK)
    assert reply.status_code == 204
    assert reply.headers[HEADER_UPLOAD_OFFSET] == str(len(data))
    head = upload.head()
    assert head.headers[HEADER_UPLOAD_LENGTH] == str(len(data))
    assert HEADER_UPLOAD_DEFER_LENGTH not in head.headers

    status = finish(app, upload)
    assert (status["state"], status["verified"], status["filesize"]) == ("complete", True, len(data))
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert app.test_client().get(f"/uploads/{upload.upload_id}/file").data == data


def test_a_length_declared_in_an_empty_patch_at_the_offset_completes_the_upload(app: Flask) -> None:
    data = os.urandom(2 * CHUNK)
    upload = deferred(app, data)
    assert upload.patch(0).status_code == 204

    assert declare(upload, len(data), len(data), len(data)).status_code == 204

    status = finish(app, upload)
    assert (status["state"], status["verified"], status["chunks"]) == ("complete", True, 2)


def test_while_the_length_is_unknown_the_listing_says_so_and_nothing_finalizes(app: Flask) -> None:
    upload = deferred(app, os.urandom(2 * CHUNK))
    assert upload.patch(0, CHUNK).status_code == 204

    status = upload.status()
    assert (status["state"], status["filesize"], status["chunks"], status["verified"]) == (
        "uploading",
        None,
        None,
        False,
    )
    assert status["bytes_received"] == CHUNK
    listed = app.test_client().get("/uploads").get_json()["uploads"]
    assert [(u["upload_id"], u["filesize"]) for u in listed] == [(upload.upload_id, None)]
    rows = dashboard_rows(app)
    assert [(r["upload_id"], r["bytes_total"], r["bytes_done"], r["progress"]) for r in rows] == [
        (upload.upload_id, None, CHUNK, None)  # the table shows no total and no percentage
    ]
    # Neither native finalize nor native chunks before the size is known.
    assert_error(app.test_client().post(f"/upload/{upload.upload_id}/finalize"), 409, "upload_incomplete")
    assert_error(app.test_client().put(f"/upload/{upload.upload_id}/chunk/0", data=bytes(CHUNK)), 409, "conflict")
    assert app.extensions["job_runner"].run_once() is False
    assert upload.status()["verified"] is False


@pytest.mark.blob_stores("local")
def test_the_local_part_file_is_not_sized_to_the_bound(app: Flask, on_s3: bool) -> None:
    upload = deferred(app, os.urandom(CHUNK + 5))
    part = app.extensions["blob_store"].part_path(upload.upload_id)
    assert part.stat().st_size == 0
    assert declare(upload, CHUNK + 5, 0).status_code == 204
    assert part.stat().st_size == CHUNK + 5


def test_the_length_is_set_once(app: Flask) -> None:
    data = os.urandom(2 * CHUNK)
    upload = deferred(app, data)
    assert declare(upload, len(data), 0, CHUNK).status_code == 204

    assert_error(declare(upload, len(data) + 1, CHUNK), 400, "invalid_field")
    assert declare(upload, len(data), CHUNK).status_code == 204  # the same value again is harmless
    assert finish(app, upload)["verified"] is True


def test_a_length_below_the_offset_is_400_and_above_the_maximum_413(app: Flask) -> None:
    upload = deferred(app, os.urandom(2 * CHUNK))
    assert upload.patch(0, CHUNK).status_code == 204
    limit = app.extensions["server_config"].max_file_size

    assert_error(declare(upload, CHUNK - 1, CHUNK, CHUNK), 400, "invalid_field")
    assert_error(declare(upload, limit + 1, CHUNK, CHUNK), 413, "file_too_large")
    assert upload.head().headers[HEADER_UPLOAD_DEFER_LENGTH] == "1"  # neither took
    assert upload.offset() == CHUNK


@pytest.mark.blob_stores("local")
def test_the_free_disk_floor_is_checked_when_the_length_arrives(
    build: Any, monkeypatch: pytest.MonkeyPatch, on_s3: bool
) -> None:
    """The bound (MAX_FILE_SIZE) is not a need: creation passes, a length that does not fit is 507."""
    app = build(min_free_disk=GiB, max_file_size=100 * GiB)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: FakeUsage(10 * GiB, 9 * GiB, GiB + CHUNK))
    upload = deferred(app, os.urandom(3 * CHUNK))
    assert upload.patch(0, CHUNK).status_code == 204

    error = assert_error(declare(upload, 3 * CHUNK, CHUNK, CHUNK), 507, "insufficient_storage")
    assert error["needed_bytes"] == 2 * CHUNK
    assert upload.head().headers[HEADER_UPLOAD_DEFER_LENGTH] == "1"
    assert declare(upload, 2 * CHUNK, CHUNK, 2 * CHUNK).status_code == 204  # what is left fits: the floor


def test_an_upload_of_unknown_length_expires_like_any_other(app: Flask, clock: FakeClock) -> None:
    upload = deferred(app, os.urandom(2 * CHUNK))
    assert upload.patch(0, CHUNK).status_code == 204
    clock.advance(app.extensions["server_config"].upload_ttl + 1)

    assert app.extensions["upload_service"].sweep() >= 1
    assert upload.head().status_code == 410


def test_a_deferred_length_is_refused_with_upload_length_or_on_a_final_upload(app: Flask) -> None:
    upload = TusUpload(app.test_client(), b"x")
    both = upload.create(**{HEADER_UPLOAD_DEFER_LENGTH: "1"})
    assert_error(both, 400, "invalid_field")
    assert_error(upload.create(defer_length=True, **{HEADER_UPLOAD_DEFER_LENGTH: "2"}), 400, "invalid_field")
    final = upload.create(defer_length=True, **{"Upload-Concat": "final;/files/" + "0" * 32})
    assert_error(final, 400, "invalid_field")


def test_an_offset_cannot_pass_a_length_declared_meanwhile_and_a_length_is_set_once(app: Flask) -> None:
    """The store's fences: a PATCH racing the declaration cannot overshoot it, a second declaration fails."""
    upload = deferred(app, os.urandom(2 * CHUNK))
    store = app.extensions["tus_service"].store
    now = app.extensions["upload_service"].clock()

    assert store.declare_length(upload.upload_id, CHUNK, 1, now) is True
    assert store.advance(upload.upload_id, 0, 2 * CHUNK, now) is False
    assert store.declare_length(upload.upload_id, 2 * CHUNK, 2, now) is False
    assert store.advance(upload.upload_id, 0, CHUNK, now) is True
    assert store.declare_length(upload.upload_id, 0, 1, now) is False  # below the offset
