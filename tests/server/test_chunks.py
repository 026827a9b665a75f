"""PUT /upload/<id>/chunk/<index>: verified, idempotent chunk writes and every way a chunk can be wrong."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.protocol import HEADER_CHUNK_SHA256, HEADER_CONTENT_MD5
from core.server.blob_store import PartFile
from core.server.identity import ANONYMOUS
from tests.server.conftest import CHUNK
from tests.server.uploads import Upload, assert_error, identity_header


@pytest.fixture
def upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(3 * CHUNK + 100))
    upload.init()
    return upload


def test_chunk_is_acknowledged_and_listed_as_received(upload: Upload) -> None:
    response = upload.send(1)

    assert response.status_code == 201
    assert response.get_json() == {
        "success": True,
        "upload_id": upload.upload_id,
        "index": 1,
        "received_count": 1,
        "chunks": 4,
        "duplicate": False,
    }
    status = upload.status()
    assert status["received"] == [1]
    assert status["missing"] == [0, 2, 3]
    assert status["bytes_received"] == CHUNK


def test_chunk_bytes_land_at_their_offset_in_any_order(upload: Upload, upload_dir: Path) -> None:
    for index in (3, 0, 2, 1):
        upload.send(index)

    assert (upload_dir / "parts" / f"{upload.upload_id}.part").read_bytes() == upload.data


def test_chunk_without_checksum_header_is_accepted(upload: Upload, client: FlaskClient) -> None:
    response = client.put(f"/upload/{upload.upload_id}/chunk/0", data=upload.piece(0))

    assert response.status_code == 201


def test_chunk_with_matching_content_md5_is_accepted(upload: Upload) -> None:
    assert upload.send(0, md5=True).status_code == 201


def test_resending_a_stored_chunk_is_idempotent(upload: Upload) -> None:
    upload.send(0)

    response = upload.send(0)

    assert response.status_code == 200
    assert response.get_json()["duplicate"] is True
    assert upload.status()["received"] == [0]


def test_resending_different_bytes_for_a_stored_chunk_is_a_conflict(upload: Upload, upload_dir: Path) -> None:
    upload.send(0)
    other = os.urandom(CHUNK)

    assert_error(upload.send(0, other), 409, "conflict")
    part = (upload_dir / "parts" / f"{upload.upload_id}.part").read_bytes()
    assert part[:CHUNK] == upload.piece(0)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({HEADER_CHUNK_SHA256: "0" * 64}, "checksum_mismatch"),
        ({HEADER_CONTENT_MD5: "AAAAAAAAAAAAAAAAAAAAAA=="}, "checksum_mismatch"),
        ({HEADER_CHUNK_SHA256: "not-hex"}, "invalid_field"),
        ({HEADER_CHUNK_SHA256: "ab" * 31}, "invalid_field"),
        ({HEADER_CONTENT_MD5: "%%%"}, "invalid_field"),
        ({HEADER_CONTENT_MD5: "AAAA"}, "invalid_field"),
    ],
)
def test_bad_chunk_checksum_is_rejected_and_not_recorded(upload: Upload, headers: dict[str, str], code: str) -> None:
    assert_error(upload.send(0, **headers), 400, code)

    assert upload.status()["received"] == []


def test_corrupted_resend_never_overwrites_an_acknowledged_chunk(upload: Upload, jobs: Any) -> None:
    upload.send_all()
    good = hashlib.sha256(upload.piece(1)).hexdigest()

    assert_error(upload.send(1, os.urandom(CHUNK), **{HEADER_CHUNK_SHA256: good}), 400, "checksum_mismatch")

    assert upload.finalize().status_code == 202
    jobs.run_once()
    assert upload.download().data == upload.data


@pytest.mark.parametrize(("index", "body_size"), [(-1, CHUNK), (4, 100), (99, CHUNK)])
def test_chunk_index_out_of_range(upload: Upload, index: int, body_size: int) -> None:
    error = assert_error(upload.send(index, os.urandom(body_size)), 400, "chunk_index_out_of_range")

    assert error["chunks"] == 4


@pytest.mark.parametrize(("index", "size"), [(0, CHUNK - 1), (0, CHUNK + 1), (3, CHUNK), (3, 99), (1, 0)])
def test_chunk_of_wrong_size_is_rejected(upload: Upload, index: int, size: int) -> None:
    error = assert_error(upload.send(index, os.urandom(size)), 400, "chunk_size_mismatch")

    assert error["expected"] == (100 if index == 3 else CHUNK)
    assert upload.status()["received"] == []


def test_chunk_without_content_length_is_rejected(upload: Upload, client: FlaskClient) -> None:
    response = client.put(
        f"/upload/{upload.upload_id}/chunk/0",
        input_stream=io.BytesIO(upload.piece(0)),
        headers={"Transfer-Encoding": "chunked"},
    )

    assert_error(response, 411, "length_required")


@pytest.mark.parametrize("upload_id", ["0" * 32, "../../etc/passwd", "ABC", "f" * 33])
def test_chunk_for_unknown_upload_is_not_found(client: FlaskClient, upload_id: str) -> None:
    assert_error(client.put(f"/upload/{upload_id}/chunk/0", data=b"x"), 404, "not_found")


def test_chunk_for_another_robots_upload_is_not_found(new_upload: Any) -> None:
    upload = new_upload(os.urandom(CHUNK), headers=identity_header("robot1"))
    upload.init()
    upload.headers = identity_header("robot2")

    assert_error(upload.send(0), 404, "not_found")


def test_admin_may_send_to_any_upload(new_upload: Any) -> None:
    upload = new_upload(os.urandom(CHUNK), headers=identity_header("robot1"))
    upload.init()
    upload.headers = identity_header("ops", admin=True)

    assert upload.send(0).status_code == 201


def test_chunk_after_finalize_is_a_conflict(upload: Upload) -> None:
    upload.send_all()
    upload.finalize()

    error = assert_error(upload.send(0), 409, "conflict")

    assert error["state"] == "finalizing"


def test_chunk_body_larger_than_max_chunk_size_is_payload_too_large(make_app: Any) -> None:
    client = make_app(max_chunk_size=4096, default_chunk_size=4096).test_client()
    reply = client.post("/upload/init", json={"filename": "a.bag", "filesize": 8192, "chunk_size": 4096}).get_json()

    response = client.put(f"/upload/{reply['upload_id']}/chunk/0", data=os.urandom(5000))

    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("full", ["part file", "state store"])
def test_disk_full_while_storing_a_chunk_is_507_and_nothing_is_acknowledged(
    upload: Upload, app: Flask, monkeypatch: pytest.MonkeyPatch, full: str
) -> None:
    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if full == "part file":
        monkeypatch.setattr(PartFile, "write_at", disk_full)
    else:
        monkeypatch.setattr(app.extensions["state_store"], "record_chunk", disk_full)

    assert_error(upload.send(0), 507, "insufficient_storage")
    monkeypatch.undo()
    assert upload.status()["received"] == []
    assert upload.send(0).status_code == 201


def test_disk_full_at_init_is_507(client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(app.extensions["blob_store"], "create_part", disk_full)

    response = client.post("/upload/init", json={"filename": "a.bag", "filesize": 10})

    assert_error(response, 507, "insufficient_storage")
    assert client.get("/uploads").get_json()["total"] == 0


@pytest.mark.parametrize(
    ("ends_upload", "status", "code"), [("abort", 409, "conflict"), ("sweep", 410, "upload_expired")]
)
def test_upload_ended_while_a_chunk_arrives_gets_a_clear_error(
    upload: Upload, app: Flask, clock: Any, monkeypatch: pytest.MonkeyPatch, ends_upload: str, status: int, code: str
) -> None:
    service, blobs = app.extensions["upload_service"], app.extensions["blob_store"]
    real_open = blobs.open_part

    def end_then_open(upload_id: str) -> Any:
        if ends_upload == "abort":
            service.abort(ANONYMOUS, upload_id)
        else:
            clock.advance(service.config.upload_ttl + 1)
            service.sweep()
        return real_open(upload_id)

    monkeypatch.setattr(blobs, "open_part", end_then_open)

    assert_error(upload.send(0), status, code)
