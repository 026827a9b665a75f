"""Status, finalize, abort, listing, download, health and the JSON shape of every generic HTTP error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import core
from core.protocol import FEATURE_FINALIZE_SHA256, FINGERPRINT_EDGE
from tests.server.conftest import CHUNK
from tests.server.uploads import Upload, assert_error, identity_header

STATUS_FIELDS = {
    "state", "filename", "filesize", "chunk_size", "chunks", "received", "missing", "bytes_received", "md5", "sha256",
    "verified", "codec", "stored_size", "compression_ratio", "error", "created_at", "updated_at", "owner", "metadata",
}  # fmt: skip


@pytest.fixture
def upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(2 * CHUNK + 7))
    upload.init(metadata={"robot": "r1", "session": "s7"})
    return upload


def test_health_reports_version_and_seed_features(client: FlaskClient) -> None:
    body = client.get("/health").get_json()

    assert body["status"] == "ok"
    assert body["version"] == core.__version__
    assert {"chunked-upload", "compression", "rate-limiting", "ssl-support", "resumable"} <= set(body["features"])
    assert body["timestamp"].endswith("+00:00")


def test_status_gives_everything_needed_to_resume(upload: Upload) -> None:
    upload.send(1)

    status = upload.status()

    assert set(status) >= STATUS_FIELDS
    assert status["state"] == "uploading"
    assert status["received"] == [1]
    assert status["missing"] == [0, 2]
    assert status["verified"] is False
    assert status["metadata"] == {"robot": "r1", "session": "s7"}
    assert status["owner"] == "anonymous"
    assert status["sha256"] == hashlib.sha256(upload.data).hexdigest()


def test_finalize_returns_202_then_the_job_verifies_and_stores(upload: Upload, jobs: Any, upload_dir: Path) -> None:
    upload.send_all()

    response = upload.finalize()

    assert response.status_code == 202
    assert response.get_json()["state"] == "finalizing"
    assert jobs.run_once() is True
    status = upload.status()
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert status["missing"] == []
    assert status["progress"] == 1.0
    assert upload.download().data == upload.data
    assert not (upload_dir / "parts" / f"{upload.upload_id}.part").exists()
    sidecars = list((upload_dir / "store").rglob("*.json"))
    assert len(sidecars) == 1
    assert '"original_filename": "test.bag"' in sidecars[0].read_text()


def test_finalize_of_complete_upload_is_200_and_idempotent(upload: Upload, jobs: Any) -> None:
    upload.send_all()
    upload.finalize()
    jobs.run_once()

    response = upload.finalize()

    assert response.status_code == 200
    assert response.get_json()["state"] == "complete"


def test_finalize_twice_while_finalizing_queues_one_job(upload: Upload, jobs: Any) -> None:
    upload.send_all()

    assert upload.finalize().status_code == 202
    assert upload.finalize().status_code == 202
    assert jobs.run_once() is True
    assert jobs.run_once() is False


def test_finalize_with_missing_chunks_lists_them(upload: Upload) -> None:
    upload.send(0)

    error = assert_error(upload.finalize(), 409, "upload_incomplete")

    assert error["missing"] == [1, 2]


def test_wrong_whole_file_checksum_fails_the_upload_with_a_clear_error(new_upload: Any, jobs: Any) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.init(sha256="0" * 64)
    upload.send_all()
    upload.finalize()

    jobs.run_once()

    status = upload.status()
    assert status["state"] == "failed"
    assert status["verified"] is False
    assert status["error"]["code"] == "checksum_mismatch"
    assert_error(upload.download(), 409, "conflict")


def test_upload_without_checksum_completes_but_is_not_verified(client: FlaskClient, jobs: Any) -> None:
    data = os.urandom(100)
    upload_id = client.post("/upload/init", json={"filename": "a.bag", "filesize": 100}).get_json()["upload_id"]
    client.put(f"/upload/{upload_id}/chunk/0", data=data)
    client.post(f"/upload/{upload_id}/finalize")
    jobs.run_once()

    status = client.get(f"/upload/{upload_id}").get_json()

    assert status["state"] == "complete"
    assert status["verified"] is False
    assert status["sha256"] == hashlib.sha256(data).hexdigest()


def test_abort_removes_the_part_file_and_blocks_further_chunks(upload: Upload, upload_dir: Path) -> None:
    upload.send(0)

    response = upload.client.delete(f"/upload/{upload.upload_id}")

    assert response.status_code == 200
    assert response.get_json()["state"] == "aborted"
    assert not (upload_dir / "parts" / f"{upload.upload_id}.part").exists()
    assert_error(upload.send(1), 409, "conflict")
    assert upload.client.delete(f"/upload/{upload.upload_id}").status_code == 200


def test_abort_during_finalize_wins_over_the_job(upload: Upload, jobs: Any, upload_dir: Path) -> None:
    upload.send_all()
    upload.finalize()
    upload.client.delete(f"/upload/{upload.upload_id}")

    jobs.run_once()

    assert upload.status()["state"] == "aborted"
    assert not [p for p in (upload_dir / "store").rglob("*") if p.is_file()]


def test_abort_of_complete_upload_is_a_conflict(upload: Upload, jobs: Any) -> None:
    upload.send_all()
    upload.finalize()
    jobs.run_once()

    assert_error(upload.client.delete(f"/upload/{upload.upload_id}"), 409, "conflict")


def test_download_before_complete_is_a_conflict(upload: Upload) -> None:
    assert_error(upload.download(), 409, "conflict")


def test_download_has_attachment_name_and_length(upload: Upload, jobs: Any) -> None:
    upload.send_all()
    upload.finalize()
    jobs.run_once()

    response = upload.download()

    assert response.headers["Content-Length"] == str(len(upload.data))
    assert 'filename="test.bag"' in response.headers["Content-Disposition"]


@pytest.mark.parametrize("method", ["get", "delete"])
def test_status_and_abort_of_another_robots_upload_are_not_found(new_upload: Any, method: str) -> None:
    upload = new_upload(os.urandom(CHUNK), headers=identity_header("robot1"))
    upload.init()

    response = getattr(upload.client, method)(f"/upload/{upload.upload_id}", headers=identity_header("robot2"))

    assert_error(response, 404, "not_found")


def _make_uploads(client: FlaskClient, clock: Any, owners: list[str]) -> list[str]:
    ids = []
    for number, owner in enumerate(owners):
        clock.advance(1)
        body = {"filename": f"{number}.bag", "filesize": 10}
        ids.append(client.post("/upload/init", json=body, headers=identity_header(owner)).get_json()["upload_id"])
    return ids


def test_listing_is_newest_first_paginated_with_total(client: FlaskClient, clock: Any) -> None:
    ids = _make_uploads(client, clock, ["r1", "r2", "r1", "r1"])

    page = client.get("/uploads?limit=2&offset=1").get_json()

    assert page["total"] == 4
    assert [u["upload_id"] for u in page["uploads"]] == [ids[2], ids[1]]
    assert (page["limit"], page["offset"]) == (2, 1)


def test_listing_filters_by_client_and_state(client: FlaskClient, clock: Any) -> None:
    ids = _make_uploads(client, clock, ["r1", "r2", "r1"])
    client.delete(f"/upload/{ids[0]}")

    by_client = client.get("/uploads?client=r1").get_json()
    by_state = client.get("/uploads?client=r1&state=uploading").get_json()

    assert by_client["total"] == 2
    assert [u["upload_id"] for u in by_state["uploads"]] == [ids[2]]


def test_robot_lists_only_its_own_uploads(client: FlaskClient, clock: Any) -> None:
    _make_uploads(client, clock, ["r1", "r2", "r1"])

    own = client.get("/uploads", headers=identity_header("r2")).get_json()
    foreign = client.get("/uploads?client=r1", headers=identity_header("r2")).get_json()

    assert own["total"] == 1
    assert foreign["total"] == 0


@pytest.mark.parametrize("query", ["limit=-1", "limit=abc", "limit=100000", "offset=-5", "state=bogus", "offset=1.5"])
def test_listing_rejects_bad_query_parameters(client: FlaskClient, query: str) -> None:
    assert_error(client.get(f"/uploads?{query}"), 400, "invalid_field")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/nope", 404, "not_found"),
        ("get", "/upload/abc", 404, "not_found"),
        ("get", "/uploads/" + "0" * 32 + "/file", 404, "not_found"),
        ("post", "/upload/" + "0" * 32 + "/finalize", 404, "not_found"),
        ("delete", "/health", 405, "method_not_allowed"),
        ("put", "/upload/init", 405, "method_not_allowed"),
        ("post", "/upload/x/chunk/0", 405, "method_not_allowed"),
    ],
)
def test_generic_http_errors_are_json(client: FlaskClient, method: str, path: str, status: int, code: str) -> None:
    assert_error(getattr(client, method)(path), status, code)


def test_method_not_allowed_keeps_the_allow_header(client: FlaskClient) -> None:
    assert "GET" in client.delete("/health").headers["Allow"]


def test_unexpected_exception_is_500_json_without_traceback(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.extensions["upload_service"], "status", explode)

    response = client.get("/upload/" + "0" * 32)

    assert_error(response, 500, "internal_error")
    assert b"secret internals" not in response.data
    assert b"Traceback" not in response.data
    assert "secret internals" in caplog.text


def test_a_sha256_declared_at_finalize_verifies_an_upload_initialised_without_one(new_upload: Any, jobs: Any) -> None:
    upload = new_upload(os.urandom(2 * CHUNK + 3))
    upload.init(checksum=None, sha256=None)  # a client that hashes while it sends
    upload.send_all()

    assert upload.finalize({"sha256": hashlib.sha256(upload.data).hexdigest().upper()}).status_code == 202
    jobs.run_once()

    status = upload.status()
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert status["sha256"] == hashlib.sha256(upload.data).hexdigest()


def test_a_wrong_sha256_declared_at_finalize_fails_the_upload(new_upload: Any, jobs: Any) -> None:
    upload = new_upload(os.urandom(CHUNK))
    upload.init(checksum=None, sha256=None)
    upload.send_all()

    assert upload.finalize({"sha256": "1" * 64}).status_code == 202
    jobs.run_once()

    status = upload.status()
    assert status["state"] == "failed"
    assert status["verified"] is False
    assert status["error"]["code"] == "checksum_mismatch"


def test_a_finalize_sha256_contradicting_init_is_refused_and_changes_nothing(upload: Upload) -> None:
    upload.send_all()

    assert_error(upload.finalize({"sha256": "2" * 64}), 409, "checksum_mismatch")

    assert upload.status()["state"] == "uploading"
    assert upload.finalize({"sha256": hashlib.sha256(upload.data).hexdigest()}).status_code == 202


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"[1]", "invalid_field"), (b"{not json", "invalid_json"), (b'{"sha256": "xyz"}', "invalid_field")],
)
def test_a_malformed_finalize_body_is_a_400(upload: Upload, body: bytes, code: str) -> None:
    upload.send_all()
    url = f"/upload/{upload.upload_id}/finalize"

    assert_error(upload.client.post(url, data=body, content_type="application/json"), 400, code)
    assert upload.status()["state"] == "uploading"


def fingerprint_of(data: bytes) -> str:
    """core.checksums.fingerprint of bytes (the test files are smaller than twice FINGERPRINT_EDGE)."""
    assert len(data) <= 2 * FINGERPRINT_EDGE
    return hashlib.sha256(len(data).to_bytes(8, "big") + data).hexdigest()


def stored_first(new_upload: Any, jobs: Any, data: bytes, **fields: Any) -> Upload:
    """A verified stored copy of ``data`` with its fingerprint."""
    first = new_upload(data, **fields)
    first.init(fingerprint=fingerprint_of(data))
    first.send_all()
    assert first.finalize().status_code == 202
    jobs.run_once()
    assert first.status()["verified"] is True
    return first


def test_init_advertises_the_sha256_at_finalize(upload: Upload, client: FlaskClient) -> None:
    assert FEATURE_FINALIZE_SHA256 in upload.reply["features"]
    assert FEATURE_FINALIZE_SHA256 in client.get("/health").get_json()["features"]


def test_a_sha256_at_finalize_matching_a_stored_copy_completes_without_its_chunks(
    new_upload: Any, jobs: Any, upload_dir: Path
) -> None:
    data = os.urandom(2 * CHUNK + 5)
    first = stored_first(new_upload, jobs, data)
    again = new_upload(data, filename="renamed.bag")
    reply = again.init(checksum=None, sha256=None, fingerprint=fingerprint_of(data)).get_json()
    assert reply["dedup_candidate"] is True
    assert reply["state"] == "uploading"

    response = again.finalize({"sha256": hashlib.sha256(data).hexdigest()})

    assert response.status_code == 200
    status = again.status()
    assert (status["state"], status["verified"], status["deduplicated"]) == ("complete", True, True)
    assert status["sha256"] == first.status()["sha256"]
    assert not any(upload_dir.rglob(f"{again.upload_id}*"))


def test_a_sha256_at_finalize_after_every_chunk_links_to_a_stored_copy_and_drops_the_staged_one(
    new_upload: Any, jobs: Any, upload_dir: Path
) -> None:
    data = os.urandom(CHUNK + 7)
    stored_first(new_upload, jobs, data)
    again = new_upload(data)
    reply = again.init(checksum=None, sha256=None).get_json()  # no fingerprint: no candidate known at init
    assert reply["dedup_candidate"] is False
    again.send_all()

    assert again.finalize({"sha256": hashlib.sha256(data).hexdigest()}).status_code == 200

    status = again.status()
    assert (status["state"], status["verified"], status["deduplicated"]) == ("complete", True, True)
    assert not any(upload_dir.rglob(f"{again.upload_id}*"))
    assert again.download().data == data


def test_a_sha256_at_finalize_matching_nothing_stored_still_needs_every_chunk(new_upload: Any, jobs: Any) -> None:
    data = os.urandom(2 * CHUNK)
    stored_first(new_upload, jobs, data)
    other = new_upload(os.urandom(2 * CHUNK))
    assert other.init(checksum=None, sha256=None, fingerprint=fingerprint_of(data)).get_json()["dedup_candidate"]

    response = other.finalize({"sha256": hashlib.sha256(other.data).hexdigest()})

    assert_error(response, 409, "upload_incomplete")
    other.send_all()
    assert other.finalize({"sha256": hashlib.sha256(other.data).hexdigest()}).status_code == 202
    jobs.run_once()
    assert other.status()["deduplicated"] is False
    assert other.status()["verified"] is True


def test_finalize_never_links_to_another_robots_copy(new_upload: Any, jobs: Any) -> None:
    data = os.urandom(CHUNK)
    stored_first(new_upload, jobs, data, headers=identity_header("robot-a"))
    other = new_upload(data, headers=identity_header("robot-b"))
    reply = other.init(checksum=None, sha256=None, fingerprint=fingerprint_of(data)).get_json()
    assert reply["dedup_candidate"] is False

    assert_error(other.finalize({"sha256": hashlib.sha256(data).hexdigest()}), 409, "upload_incomplete")


def test_an_init_with_the_same_fingerprint_resumes_the_upload_in_progress(new_upload: Any) -> None:
    data = os.urandom(2 * CHUNK)
    first = new_upload(data)
    first.init(checksum=None, sha256=None, fingerprint=fingerprint_of(data))
    first.send(0)
    again = new_upload(data)

    response = again.init(checksum=None, sha256=None, fingerprint=fingerprint_of(data))

    assert response.status_code == 200
    assert again.upload_id == first.upload_id
    assert response.get_json()["received"] == [0]
