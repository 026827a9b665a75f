"""POST /upload/init: new uploads, the seed's body, resume on re-init, deduplication and every bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.protocol import MiB
from tests.server.conftest import CHUNK
from tests.server.uploads import assert_error, identity_header

SEED_BODY = {"filename": "recording.bag", "filesize": 50 * MiB, "chunks": 10, "checksum": "0" * 32, "compression": True}


def test_seed_body_is_accepted_with_compression_enabled(client: FlaskClient) -> None:
    response = client.post("/upload/init", json=SEED_BODY)

    assert response.status_code == 201
    reply = response.get_json()
    assert reply["success"] is True
    assert reply["compression_enabled"] is True
    assert reply["chunk_size"] == 5 * MiB
    assert reply["chunks"] == 10
    assert reply["received"] == []
    assert reply["state"] == "uploading"
    assert reply["deduplicated"] is False
    assert len(reply["upload_id"]) == 32


def test_seed_rate_limit_example_without_checksum_is_accepted(client: FlaskClient) -> None:
    response = client.post("/upload/init", json={"filename": "test.bag", "filesize": 1000, "chunks": 1})

    assert response.status_code == 201
    assert response.get_json()["chunk_size"] == 1000


def test_init_without_content_type_still_parses_json(client: FlaskClient) -> None:
    response = client.post("/upload/init", data=b'{"filename": "a.bag", "filesize": 10, "chunks": 1}')

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("compression", "enabled", "codec"),
    [
        (True, True, "zstd"),
        (False, False, "none"),
        (None, False, "none"),
        ("gzip", True, "gzip"),
        ("none", False, "none"),
    ],
)
def test_compression_field_accepts_bool_or_codec(
    client: FlaskClient, compression: Any, enabled: bool, codec: str
) -> None:
    response = client.post("/upload/init", json={**SEED_BODY, "compression": compression})

    assert response.status_code == 201
    assert response.get_json()["compression_enabled"] is enabled
    assert response.get_json()["compression"] == codec


def test_empty_file_has_one_empty_chunk(client: FlaskClient) -> None:
    response = client.post("/upload/init", json={"filename": "empty.bag", "filesize": 0})

    assert response.status_code == 201
    assert response.get_json()["chunks"] == 1


BAD_BODIES = [
    pytest.param({"filesize": 10}, 400, "invalid_field", id="missing-filename"),
    pytest.param({"filename": 7, "filesize": 10}, 400, "invalid_field", id="filename-not-string"),
    pytest.param({"filename": "../..", "filesize": 10}, 400, "invalid_field", id="filename-only-dots"),
    pytest.param({"filename": "\x00\x01", "filesize": 10}, 400, "invalid_field", id="filename-control-only"),
    pytest.param({"filename": "a.bag"}, 400, "invalid_field", id="missing-filesize"),
    pytest.param({"filename": "a.bag", "filesize": -1}, 400, "invalid_field", id="negative-filesize"),
    pytest.param({"filename": "a.bag", "filesize": "10"}, 400, "invalid_field", id="filesize-string"),
    pytest.param({"filename": "a.bag", "filesize": True}, 400, "invalid_field", id="filesize-bool"),
    pytest.param({"filename": "a.bag", "filesize": 10 * 1024**4}, 413, "file_too_large", id="too-large"),
    pytest.param({"filename": "a.bag", "filesize": 10, "chunks": 0}, 400, "invalid_field", id="zero-chunks"),
    pytest.param(
        {"filename": "a.bag", "filesize": 100, "chunks": 3, "chunk_size": 10},
        400,
        "invalid_field",
        id="chunks-disagree-with-chunk-size",
    ),
    pytest.param(
        {"filename": "a.bag", "filesize": 10**9, "chunk_size": 10**9}, 400, "invalid_field", id="chunk-size-above-max"
    ),
    pytest.param(
        {"filename": "a.bag", "filesize": 1000, "chunk_size": 8}, 400, "invalid_field", id="chunk-size-below-min"
    ),
    pytest.param({"filename": "a.bag", "filesize": 10, "checksum": "xyz"}, 400, "invalid_field", id="bad-md5"),
    pytest.param({"filename": "a.bag", "filesize": 10, "sha256": "ab" * 31}, 400, "invalid_field", id="bad-sha256"),
    pytest.param({"filename": "a.bag", "filesize": 10, "compression": "lzma"}, 400, "invalid_field", id="bad-codec"),
    pytest.param({"filename": "a.bag", "filesize": 10, "compression": 1}, 400, "invalid_field", id="codec-number"),
    pytest.param({"filename": "a.bag", "filesize": 10, "metadata": [1]}, 400, "invalid_field", id="metadata-list"),
    pytest.param(
        {"filename": "a.bag", "filesize": 10, "metadata": {"x": "y" * 20000}},
        400,
        "invalid_field",
        id="metadata-too-large",
    ),
    pytest.param([1, 2], 400, "invalid_field", id="body-not-object"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_init_body_is_rejected_with_json_error(client: FlaskClient, body: Any, status: int, code: str) -> None:
    assert_error(client.post("/upload/init", json=body), status, code)


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff\xfe"])
def test_init_body_that_is_not_json_is_invalid_json(client: FlaskClient, raw: bytes) -> None:
    response = client.post("/upload/init", data=raw, content_type="application/json")

    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("../../../../etc/passwd", "passwd"),
        ("/abs/path/run.bag", "run.bag"),
        ("..\\..\\windows\\run.bag", "run.bag"),
        ("ev\x00il\nname.bag", "evilname.bag"),
        ("~/.ssh/authorized_keys", "authorized_keys"),
    ],
)
def test_traversal_filenames_never_create_files_outside_the_storage_root(
    client: FlaskClient, upload_dir: Path, tmp_path: Path, filename: str, shown: str
) -> None:
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(upload_dir)}
    data = os.urandom(3 * CHUNK)
    body = {
        "filename": filename,
        "filesize": len(data),
        "chunk_size": CHUNK,
        "compression": True,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    reply = client.post("/upload/init", json=body).get_json()
    upload_id = reply["upload_id"]
    for i in range(3):
        client.put(f"/upload/{upload_id}/chunk/{i}", data=data[i * CHUNK : (i + 1) * CHUNK])
    client.post(f"/upload/{upload_id}/finalize")

    status = client.get(f"/upload/{upload_id}").get_json()
    assert status["filename"] == shown
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(upload_dir)}
    assert after == before
    assert not any(shown in p.name for p in upload_dir.rglob("*"))


def test_reinit_of_same_file_resumes_with_received_chunks(new_upload: Any) -> None:
    upload = new_upload(os.urandom(4 * CHUNK))
    upload.init()
    upload.send(0)
    upload.send(2)
    first_id = upload.upload_id

    response = upload.init()

    assert response.status_code == 200
    assert upload.reply["upload_id"] == first_id
    assert upload.reply["received"] == [0, 2]
    assert upload.reply["resumed"] is True


def test_reinit_by_another_robot_does_not_resume(new_upload: Any) -> None:
    data = os.urandom(2 * CHUNK)
    mine = new_upload(data, headers=identity_header("robot1"))
    theirs = new_upload(data, headers=identity_header("robot2"))
    mine.init()

    assert theirs.init().status_code == 201
    assert theirs.upload_id != mine.upload_id


def test_reinit_without_checksum_starts_a_new_upload(client: FlaskClient) -> None:
    body = {"filename": "a.bag", "filesize": 100, "chunks": 1}
    first = client.post("/upload/init", json=body).get_json()["upload_id"]

    second = client.post("/upload/init", json=body)

    assert second.status_code == 201
    assert second.get_json()["upload_id"] != first


def _complete(upload: Any, jobs: Any) -> None:
    upload.init()
    upload.send_all()
    assert upload.finalize().status_code == 202
    assert jobs.run_once()
    assert upload.status()["state"] == "complete"


def test_file_already_stored_completes_at_once_deduplicated(new_upload: Any, jobs: Any) -> None:
    data = os.urandom(3 * CHUNK)
    _complete(new_upload(data, filename="first.bag"), jobs)
    again = new_upload(data, filename="second.bag")

    response = again.init()

    assert response.status_code == 201
    assert again.reply["deduplicated"] is True
    assert again.reply["state"] == "complete"
    assert again.reply["received"] == [0, 1, 2]
    status = again.status()
    assert status["verified"] is True
    assert status["filename"] == "second.bag"
    assert again.download().data == data


def test_dedup_with_md5_only_needs_same_size_and_md5(new_upload: Any, jobs: Any, client: FlaskClient) -> None:
    data = os.urandom(2 * CHUNK)
    _complete(new_upload(data), jobs)
    body = {
        "filename": "x.bag",
        "filesize": len(data),
        "chunks": 1,
        "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
    }

    reply = client.post("/upload/init", json=body).get_json()

    assert reply["deduplicated"] is True


def test_dedup_never_hands_out_another_robots_file(new_upload: Any, jobs: Any) -> None:
    data = os.urandom(2 * CHUNK)
    _complete(new_upload(data, headers=identity_header("robot1")), jobs)
    thief = new_upload(data, headers=identity_header("robot2"))

    thief.init()

    assert thief.reply["deduplicated"] is False
    assert thief.reply["state"] == "uploading"


def test_unverified_upload_is_not_used_for_dedup(client: FlaskClient, jobs: Any) -> None:
    data = os.urandom(CHUNK)
    body = {"filename": "a.bag", "filesize": len(data), "chunks": 1}
    upload_id = client.post("/upload/init", json=body).get_json()["upload_id"]
    client.put(f"/upload/{upload_id}/chunk/0", data=data)
    client.post(f"/upload/{upload_id}/finalize")
    jobs.run_once()
    assert client.get(f"/upload/{upload_id}").get_json()["verified"] is False

    reply = client.post("/upload/init", json={**body, "sha256": hashlib.sha256(data).hexdigest()}).get_json()

    assert reply["deduplicated"] is False
