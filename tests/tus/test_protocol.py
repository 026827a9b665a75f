"""tus 1.0.0 under /files/, on every state store and blob store: the contract a tus client relies on."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from core.server.tus.protocol import (
    HEADER_TUS_CHECKSUM_ALGORITHM,
    HEADER_TUS_EXTENSION,
    HEADER_TUS_MAX_SIZE,
    HEADER_TUS_RESUMABLE,
    HEADER_TUS_VERSION,
    HEADER_UPLOAD_EXPIRES,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_OFFSET,
    TUS_VERSION,
)
from tests.server.conftest import FakeClock
from tests.server.uploads import assert_error, identity_header
from tests.tus.client import TUS, TusUpload, encode_metadata, upload_checksum
from tests.tus.conftest import CHUNK

NewUpload = Callable[[bytes], TusUpload]


def finish(app: Flask, upload: TusUpload) -> dict[str, Any]:
    """Run the finalize job the last PATCH queued; the native status afterwards."""
    assert app.extensions["job_runner"].run_once() is True
    return upload.status()


def test_options_advertises_exactly_what_is_implemented(app: Flask, on_s3: bool) -> None:
    response = app.test_client().options("/files/")

    assert response.status_code == 204
    assert response.headers[HEADER_TUS_VERSION] == TUS_VERSION
    assert response.headers[HEADER_TUS_RESUMABLE] == TUS_VERSION
    extensions = ["creation", "creation-with-upload", "creation-defer-length", "termination", "checksum", "expiration"]
    assert response.headers[HEADER_TUS_EXTENSION].split(",") == extensions + ([] if on_s3 else ["concatenation"])
    assert response.headers[HEADER_TUS_CHECKSUM_ALGORITHM] == "sha1,sha256"
    assert int(response.headers[HEADER_TUS_MAX_SIZE]) == app.extensions["server_config"].max_file_size


def test_an_upload_in_several_patches_is_finalized_verified_and_listed(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(3 * CHUNK + 100))
    created = upload.create()
    assert created.status_code == 201
    assert created.headers[HEADER_UPLOAD_EXPIRES].endswith("GMT")
    assert upload.offset() == 0

    for start, end in ((0, CHUNK), (CHUNK, 3 * CHUNK), (3 * CHUNK, None)):
        reply = upload.patch(start, end)
        assert reply.status_code == 204
        assert int(reply.headers[HEADER_UPLOAD_OFFSET]) == (end or len(upload.data))

    status = finish(app, upload)
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert status["filename"] == "robot.mcap"
    assert status["sha256"] == hashlib.sha256(upload.data).hexdigest()
    assert app.test_client().get(f"/uploads/{upload.upload_id}/file").data == upload.data
    listed = app.test_client().get("/uploads").get_json()["uploads"]
    assert [u["upload_id"] for u in listed] == [upload.upload_id]
    head = upload.head()
    assert head.headers[HEADER_UPLOAD_OFFSET] == head.headers[HEADER_UPLOAD_LENGTH] == str(len(upload.data))
    assert HEADER_UPLOAD_EXPIRES not in head.headers  # complete: the sweep no longer expires it


def test_upload_metadata_carries_the_native_init_fields(app: Flask) -> None:
    data = os.urandom(2000)
    meta = {
        "filename": "../../etc/run_1.mcap",
        "sha256": hashlib.sha256(data).hexdigest(),
        "compression": "zstd",
        "metadata": '{"robot": "r1", "session": "s7"}',
        "filetype": "application/octet-stream",
    }
    upload = TusUpload(app.test_client(), data)
    created = upload.create(**{HEADER_UPLOAD_METADATA: encode_metadata(meta)})
    assert created.status_code == 201
    assert upload.patch(0).status_code == 204

    status = finish(app, upload)
    assert status["filename"] == "run_1.mcap"  # a display name, never a path
    assert status["compression"] == "zstd"
    assert status["metadata"] == {"robot": "r1", "session": "s7", "filetype": "application/octet-stream"}
    assert status["verified"] is True
    assert upload.head().headers[HEADER_UPLOAD_METADATA] == encode_metadata(meta)


def test_creation_with_upload_stores_the_first_bytes(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(2 * CHUNK + 10))
    created = upload.create(body=upload.data[:CHUNK])

    assert created.status_code == 201
    assert created.headers[HEADER_UPLOAD_OFFSET] == str(CHUNK)
    assert upload.patch(CHUNK).status_code == 204
    assert finish(app, upload)["state"] == "complete"


def test_a_wrong_checksum_is_460_and_stores_nothing_of_that_patch(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.create()
    corrupted = bytes([upload.data[0] ^ 1]) + upload.data[1:CHUNK]

    refused = upload.patch_checked(0, CHUNK, "sha256", body=corrupted)

    assert_error(refused, 460, "checksum_mismatch")
    assert upload.offset() == 0
    assert upload.status()["received"] == []
    for algorithm, (start, end) in (("sha1", (0, CHUNK)), ("sha256", (CHUNK, None))):
        assert upload.patch_checked(start, end, algorithm).status_code == 204
    assert finish(app, upload)["verified"] is True


def test_an_unsupported_checksum_algorithm_is_400(new_upload: NewUpload) -> None:
    upload = new_upload(b"x" * 100)
    upload.create()
    refused = upload.patch(0, **{"Upload-Checksum": upload_checksum("md5", upload.data)})
    assert_error(refused, 400, "invalid_field")
    assert upload.offset() == 0


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0"])
def test_a_request_without_tus_1_0_0_is_412_naming_the_version(new_upload: NewUpload, version: str | None) -> None:
    upload = new_upload(b"x" * 100)
    upload.create()
    headers = {HEADER_TUS_RESUMABLE: version} if version else {}
    refused = upload.client.head(upload.url, headers=headers)
    assert refused.status_code == 412
    assert refused.headers[HEADER_TUS_VERSION] == TUS_VERSION


def test_a_patch_at_another_offset_is_409_naming_the_servers_offset(new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.create()
    assert upload.patch(0, CHUNK).status_code == 204

    error = assert_error(upload.patch(10, CHUNK), 409, "conflict")

    assert error["offset"] == CHUNK
    assert upload.offset() == CHUNK


def test_a_patch_without_the_offset_content_type_is_415(new_upload: NewUpload) -> None:
    upload = new_upload(b"x" * 100)
    upload.create()
    assert_error(upload.patch(0, **{"Content-Type": "application/octet-stream"}), 415, "unsupported_media_type")


def test_a_patch_beyond_the_length_is_413_and_stores_nothing(new_upload: NewUpload) -> None:
    upload = new_upload(b"x" * 100)
    upload.create()
    assert_error(upload.patch(0, body=b"x" * 101), 413, "payload_too_large")
    assert upload.offset() == 0


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({HEADER_UPLOAD_LENGTH: "-1"}, 400, "invalid_field"),
        ({HEADER_UPLOAD_LENGTH: "12abc"}, 400, "invalid_field"),
        ({HEADER_UPLOAD_LENGTH: str(10**15)}, 413, "file_too_large"),
        ({HEADER_UPLOAD_METADATA: "filename not*base64"}, 400, "invalid_field"),
        ({HEADER_UPLOAD_METADATA: "a YQ==,a YQ=="}, 400, "invalid_field"),
        ({HEADER_UPLOAD_METADATA: "sha256 " + "eHl6"}, 400, "invalid_field"),
        ({"Upload-Defer-Length": "1"}, 400, "invalid_field"),
        ({"Upload-Concat": "final;"}, 400, "invalid_field"),
    ],
)
def test_bad_creation_headers_are_4xx_json(app: Flask, headers: dict[str, str], status: int, code: str) -> None:
    sent = {**TUS, HEADER_UPLOAD_LENGTH: "10", **headers}
    assert_error(app.test_client().post("/files/", headers=sent), status, code)


def test_creation_without_upload_length_is_400(app: Flask) -> None:
    assert_error(app.test_client().post("/files/", headers=TUS), 400, "invalid_field")


def test_unknown_foreign_and_native_only_ids_are_404(app: Flask, new_upload: NewUpload) -> None:
    client = app.test_client()
    upload = new_upload(b"x" * 100)
    upload.headers = identity_header("robot-1")
    upload.create()
    native = client.post("/upload/init", json={"filename": "a.bag", "filesize": 10}).get_json()["upload_id"]

    for path, headers in (
        ("/files/" + "0" * 32, {}),
        ("/files/../../etc/passwd", {}),
        (upload.url, identity_header("robot-2")),
        ("/files/" + native, {}),
    ):
        response = client.head(path, headers={**TUS, **headers})
        assert response.status_code == 404, path
    assert upload.offset() == 0


def test_termination_frees_the_upload_and_later_requests_are_410(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.create()
    assert upload.patch(0, CHUNK).status_code == 204

    assert upload.delete().status_code == 204

    assert upload.head().status_code == 410
    assert_error(upload.patch(CHUNK), 410, "upload_aborted")
    assert upload.status()["state"] == "aborted"


def test_an_upload_idle_past_the_ttl_is_410_after_the_sweep(
    app: Flask, new_upload: NewUpload, clock: FakeClock
) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.create()
    ttl = app.extensions["server_config"].upload_ttl
    reply = upload.patch(0, CHUNK)
    assert reply.headers[HEADER_UPLOAD_EXPIRES] == upload.head().headers[HEADER_UPLOAD_EXPIRES]

    clock.advance(ttl + 1)
    assert app.extensions["upload_service"].sweep() == 1

    assert upload.head().status_code == 410  # HEAD replies carry no body
    assert_error(upload.patch(CHUNK), 410, "upload_expired")


def test_a_known_file_is_created_complete_through_deduplication(app: Flask, new_upload: NewUpload) -> None:
    first = new_upload(os.urandom(CHUNK + 1))
    first.create()
    first.patch(0)
    finish(app, first)

    second = TusUpload(app.test_client(), first.data)
    created = second.create()

    assert created.status_code == 201
    assert created.headers[HEADER_UPLOAD_OFFSET] == str(len(first.data))
    assert second.status()["deduplicated"] is True


def test_a_declared_sha256_that_the_bytes_do_not_match_fails_verification(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(CHUNK))
    meta = encode_metadata({"filename": "a.mcap", "sha256": hashlib.sha256(b"other").hexdigest()})
    upload.create(**{HEADER_UPLOAD_METADATA: meta})
    assert upload.patch(0).status_code == 204

    status = finish(app, upload)

    assert status["state"] == "failed"
    assert status["verified"] is False


def test_without_a_declared_checksum_the_upload_is_stored_but_not_verified(app: Flask, new_upload: NewUpload) -> None:
    upload = new_upload(os.urandom(CHUNK + 5))
    upload.create(declare_sha256=False)
    assert upload.patch(0).status_code == 204

    status = finish(app, upload)

    assert status["state"] == "complete"
    assert status["verified"] is False
    assert status["sha256"] == hashlib.sha256(upload.data).hexdigest()
    assert status["filename"] == "robot.mcap"


def test_a_browser_on_an_allowed_origin_may_send_and_read_the_tus_headers(make_app: Callable[..., Flask]) -> None:
    app = make_app(cors_origins=("https://dashboard.example",), default_chunk_size=CHUNK)
    client = app.test_client()
    origin = {"Origin": "https://dashboard.example"}
    preflight = client.options(
        "/files/0123456789abcdef0123456789abcdef",
        headers={
            **origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type",
        },
    )
    assert preflight.status_code == 204
    assert {"PATCH", "HEAD"} <= {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"tus-resumable", "upload-offset", "upload-length", "upload-metadata", "upload-checksum"} <= allowed

    upload = TusUpload(client, os.urandom(100), headers=origin)
    created = upload.create()

    assert created.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
    exposed = {h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "upload-offset", "upload-length", "tus-resumable", "upload-expires"} <= exposed
    assert upload.head().headers["Access-Control-Allow-Origin"] == "https://dashboard.example"


def test_one_patch_may_carry_more_than_a_native_chunk_body(build: Callable[..., Flask]) -> None:
    """tus clients send the whole file in one PATCH by default: the body limit is MAX_FILE_SIZE, not MAX_CHUNK_SIZE."""
    app = build(max_chunk_size=2 * CHUNK)
    upload = TusUpload(app.test_client(), os.urandom(5 * CHUNK + 1))
    upload.create()

    reply = upload.patch(0)

    assert reply.status_code == 204
    assert reply.headers[HEADER_UPLOAD_OFFSET] == str(len(upload.data))
    assert finish(app, upload)["verified"] is True
