"""The upload protocol over both blob stores: local disk and S3 (a real SeaweedFS) answer the same way."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from flask import Flask

from core.checksums import ChunkChecksum
from core.client.job import _PIECE_REFUSALS
from core.protocol import (
    HEADER_ACCEPT_RANGES,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_CONTENT_RANGE,
    HEADER_PIECE_SHA256,
    HEADER_RETRY_AFTER,
    MIN_PIECE_SIZE,
    ChunkAlgorithm,
    Codec,
    ErrorCode,
)
from core.server import backup, finalize
from core.server.app import close_app, create_app
from core.server.blobs import LocalBlobStore, StoreMisconfigured
from core.server.blobs.s3 import MIN_PART_SIZE, S3BlobStore
from core.server.identity import Identity
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.seaweedfs import SeaweedFS
from tests.helpers.state import pass_database_time
from tests.server.conftest import settings_for
from tests.server.test_blob_stores import lose_part
from tests.server.uploads import Upload

ADMIN = Identity("admin", admin=True)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An app on local disk, or on a fresh SeaweedFS bucket configured the way an operator would (env vars)."""
    if request.param == "local":
        return make_app()
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return make_app(blob_store_uri=f"s3://{seaweedfs.new_bucket()}/server")


def _upload(app: Flask, data: bytes, chunk_size: int = 1024, **init: Any) -> Upload:
    upload = Upload(app.test_client(), data, chunk_size)
    assert upload.init(**init).status_code == 201
    return upload


def _send(upload: Upload, order: list[int] | None = None) -> None:
    for index in order or list(reversed(range(upload.chunks))):
        response = upload.send(index)
        assert response.status_code == 201, response.get_json()


def _complete(app: Flask, data: bytes, chunk_size: int = 1024, **init: Any) -> Upload:
    upload = _upload(app, data, chunk_size, **init)
    _send(upload)
    assert upload.finalize().status_code == 202
    assert app.extensions["job_runner"].run_once() is True
    assert upload.status()["state"] == "complete"
    return upload


@pytest.mark.parametrize(
    ("data", "chunk_size", "compression", "codec"),
    [
        (b"robot telemetry " * 40_000, 1024, True, "zstd"),  # small chunks, compressed
        (os.urandom(2 * MIN_PART_SIZE + 77), MIN_PART_SIZE, True, "none"),  # multipart parts, incompressible
        (os.urandom(5000), 1000, False, "none"),
    ],
)
def test_upload_finalize_download_byte_identical(
    backend: Flask, data: bytes, chunk_size: int, compression: bool, codec: str
) -> None:
    upload = _complete(backend, data, chunk_size, compression=compression, metadata={"robot": "r1"})

    status = upload.status()
    assert (status["codec"], status["verified"], status["sha256"]) == (codec, True, hashlib.sha256(data).hexdigest())
    assert upload.download().data == data
    sidecar = backend.extensions["blob_store"].read_sidecar(upload.upload_id)
    assert (sidecar["codec"], sidecar["sha256"], sidecar["metadata"]) == (codec, status["sha256"], {"robot": "r1"})
    assert sidecar["stored_size"] == status["stored_size"]


@pytest.mark.parametrize("compression", [True, False])
@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=1000-", 1000, None), ("bytes=-10", -10, None), ("bytes=5-5", 5, 6)],
)
def test_downloads_answer_range_requests(
    backend: Flask, compression: bool, header: str, start: int, stop: int | None
) -> None:
    data = b"0123456789abcdef" * 2000
    upload = _complete(backend, data, compression=compression)
    expected = data[start:stop]

    reply = upload.client.get(f"/uploads/{upload.upload_id}/file", headers={"Range": header})

    assert reply.status_code == 206
    assert reply.data == expected
    first = start % len(data)
    assert reply.headers[HEADER_CONTENT_RANGE] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert reply.headers[HEADER_ACCEPT_RANGES] == "bytes"
    assert reply.headers["Content-Length"] == str(len(expected))
    assert reply.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def test_a_range_of_the_raw_compressed_bytes_is_served_from_the_store(backend: Flask) -> None:
    data = b"".join(f"topic /odom seq {i}\n".encode() for i in range(20_000))
    upload = _complete(backend, data, compression=True)
    whole = upload.download(raw=True).data

    reply = upload.client.get(f"/uploads/{upload.upload_id}/file?raw=1", headers={"Range": "bytes=10-49"})

    assert (reply.status_code, reply.data) == (206, whole[10:50])
    assert reply.headers[HEADER_CONTENT_RANGE] == f"bytes 10-49/{len(whole)}"


def test_an_unsatisfiable_range_is_416_with_the_length(backend: Flask) -> None:
    upload = _complete(backend, b"x" * 100)

    reply = upload.client.get(f"/uploads/{upload.upload_id}/file", headers={"Range": "bytes=100-200"})

    assert reply.status_code == 416
    assert reply.get_json()["error"]["code"] == "range_not_satisfiable"
    assert reply.headers[HEADER_CONTENT_RANGE] == "bytes */100"


def test_a_stale_if_range_or_several_ranges_get_the_whole_file(backend: Flask) -> None:
    upload = _complete(backend, b"y" * 3000)
    url = f"/uploads/{upload.upload_id}/file"

    stale = upload.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
    several = upload.client.get(url, headers={"Range": "bytes=0-9,20-29"})
    plain = upload.client.get(url)

    for reply in (stale, several, plain):
        assert (reply.status_code, len(reply.data)) == (200, 3000)
        assert reply.headers[HEADER_ACCEPT_RANGES] == "bytes"


def test_deduplicated_uploads_download_from_the_first_copy(backend: Flask) -> None:
    data = os.urandom(4000)
    first = _complete(backend, data)

    second = Upload(backend.test_client(), data, 1024, filename="again.bag")
    reply = second.init()

    assert reply.get_json()["deduplicated"] is True
    assert second.download().data == data
    assert first.download().data == data


def test_a_deleted_blob_is_gone_from_the_store(backend: Flask) -> None:
    upload = _complete(backend, os.urandom(3000))
    blobs = backend.extensions["blob_store"]

    blobs.delete(upload.upload_id)

    assert upload.download().status_code == 404
    assert list(blobs.list_stored()) == []


def test_a_chunk_after_the_part_was_lost_is_410_and_a_new_upload_succeeds(backend: Flask) -> None:
    """Multipart-sized chunks: S3 refuses a part for an aborted multipart upload at once (small chunk
    objects that vanish are caught at finalize, see the next test)."""
    data = os.urandom(2 * MIN_PART_SIZE + 10)
    upload = _upload(backend, data, MIN_PART_SIZE)
    assert upload.send(0).status_code == 201
    lose_part(backend.extensions["blob_store"], upload.upload_id)

    reply = upload.send(1)

    assert reply.status_code == 410
    assert reply.get_json()["error"]["code"] == "part_missing"
    gone = upload.client.get(f"/upload/{upload.upload_id}")
    assert (gone.status_code, gone.get_json()["error"]["code"]) == (410, "part_missing")
    assert _complete(backend, data, MIN_PART_SIZE).download().data == data  # the client starts over


def test_a_part_lost_before_finalize_ends_in_part_missing_not_a_retry_loop(backend: Flask) -> None:
    upload = _upload(backend, os.urandom(3000))
    _send(upload)
    lose_part(backend.extensions["blob_store"], upload.upload_id)

    assert upload.finalize().status_code == 202
    assert backend.extensions["job_runner"].run_once() is True

    gone = upload.client.get(f"/upload/{upload.upload_id}")
    assert (gone.status_code, gone.get_json()["error"]["code"]) == (410, "part_missing")
    assert backend.extensions["job_runner"].run_once() is False


def test_the_sweep_removes_expired_and_orphaned_parts(backend: Flask, clock: Any) -> None:
    service, blobs = backend.extensions["upload_service"], backend.extensions["blob_store"]
    expired = _upload(backend, os.urandom(2 * MIN_PART_SIZE), MIN_PART_SIZE)
    assert expired.send(0).status_code == 201
    orphan = "ab" * 16  # received data whose upload the state store never recorded (a crash at init)
    blobs.create_part(orphan, 2 * MIN_PART_SIZE, MIN_PART_SIZE)
    clock.advance(service.config.upload_ttl + 1)
    service.wall_clock = lambda: time.time() + service.config.upload_ttl + 60

    assert service.sweep() == 1

    assert list(blobs.parts_idle_since(time.time() + 10 * service.config.upload_ttl)) == []
    if isinstance(blobs, S3BlobStore):
        assert blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", []) == []


class _SlowBody:
    """A request body that arrives only when the test says so: a robot on a stalled link."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.release = threading.Event()
        self.reading = threading.Event()

    def read(self, size: int = -1) -> bytes:
        self.reading.set()
        assert self.release.wait(30)
        piece, self.data = self.data[:size], self.data[size:]
        return piece


def test_a_stalled_chunk_body_does_not_hold_the_chunk_lock(backend: Flask) -> None:
    """A retry of a chunk from a reconnected robot must not wait behind its own dead request."""
    service = backend.extensions["upload_service"]
    upload = _upload(backend, os.urandom(2048))
    checksum = ChunkChecksum.of(ChunkAlgorithm.SHA256, (upload.piece(0),))
    stalled = _SlowBody(upload.piece(0))
    results: dict[str, Any] = {}

    def slow_request() -> None:
        results["slow"] = service.put_chunk(ADMIN, upload.upload_id, 0, stalled, content_length=1024, checksum=checksum)

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert stalled.reading.wait(10)

    retry = upload.send(0)  # the same chunk while the first body is still on its way
    stalled.release.set()
    thread.join(30)

    assert retry.status_code == 201
    assert results["slow"].duplicate is True


def test_new_store_directories_are_fsynced_in_their_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = __import__("core.server.blobs.local", fromlist=["fsync_dir"]).fsync_dir
    monkeypatch.setattr("core.server.blobs.local.fsync_dir", lambda p: (synced.append(Path(p)), real(p))[1])
    store = LocalBlobStore(tmp_path / "root")
    assert tmp_path / "root" in synced  # parts/, locks/, staging/, store/ entries made durable
    upload_id = "cd" * 16
    store.create_part(upload_id, 10, 10)
    synced.clear()

    store.store_part(upload_id, upload_id)

    assert synced[:2] == [store.store, store.store / "cd"]  # the new cd/ entry, then the rename inside it
    assert store.parts in synced


def test_an_unreachable_store_mid_upload_is_503_and_the_upload_resumes(
    seaweedfs: SeaweedFS, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = seaweedfs.new_bucket()
    with FaultProxy(seaweedfs.ports["s3"]) as proxy:
        for name, value in {**seaweedfs.env(), "AWS_ENDPOINT_URL_S3": proxy.url, "AWS_MAX_ATTEMPTS": "2"}.items():
            monkeypatch.setenv(name, value)
        app = make_app(blob_store_uri=f"s3://{bucket}/p")
        data = os.urandom(3000)
        upload = _upload(app, data)
        assert upload.send(0).status_code == 201
        proxy.drop_after_bytes = 0  # the object store goes away

        reply = upload.send(1)

        assert reply.status_code == 503
        assert reply.get_json()["error"]["code"] == "service_unavailable"
        assert int(reply.headers[HEADER_RETRY_AFTER]) > 0
        assert upload.status()["received"] == [0]  # nothing was acknowledged that is not stored
        proxy.drop_after_bytes = None
        _send(upload, [1, 2])
        assert upload.finalize().status_code == 202
        assert app.extensions["job_runner"].run_once() is True
        assert upload.download().data == data


def test_a_missing_bucket_stops_the_server_at_start_up_with_a_clear_message(
    seaweedfs: SeaweedFS, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)

    with pytest.raises(StoreMisconfigured, match=r"bucket 'not-created'.*create it first"):
        make_app(blob_store_uri="s3://not-created/prefix")


def test_the_default_store_is_upload_dir_and_file_uris_name_another_directory(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    assert make_app().extensions["blob_store"].root == tmp_path / "uploads"
    other = make_app(blob_store_uri=f"file://{tmp_path / 'bytes'}").extensions["blob_store"]
    assert (other.root, (tmp_path / "bytes" / "store").is_dir()) == (tmp_path / "bytes", True)


def test_backup_and_restore_round_trip_on_both_stores(
    backend: Flask, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Stored files in the bucket are copied into the backup and written back into an empty bucket on restore."""
    texts = b"".join(f"/imu seq {i}\n".encode() for i in range(30_000))
    done = [_complete(backend, texts, compression=True), _complete(backend, os.urandom(5000))]
    config = backend.extensions["server_config"]
    blobs = backend.extensions["blob_store"]
    first = backup.create_backup(config.upload_dir, tmp_path / "b1", blobs=blobs)
    again = backup.create_backup(config.upload_dir, tmp_path / "b2", previous=tmp_path / "b1", blobs=blobs)
    stored = sorted(e.path for e in first.entries if e.path.startswith("store/"))
    assert len(stored) == 4  # two blobs, two sidecars
    assert (tmp_path / "b2" / stored[0]).stat().st_ino == (tmp_path / "b1" / stored[0]).stat().st_ino
    assert sorted(e.path for e in again.entries) == sorted(e.path for e in first.entries)

    overrides: dict[str, Any] = {}
    target: Any = None
    if isinstance(blobs, S3BlobStore):
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        bucket = seaweedfs.new_bucket()
        overrides["blob_store_uri"] = f"s3://{bucket}/restored"
        target = S3BlobStore(bucket, "restored", client=seaweedfs.client())
    backup.restore_backup(tmp_path / "b1", tmp_path / "restored", blobs=target)
    restored = create_app(settings_for(tmp_path / "restored", **overrides))
    try:
        for upload in done:
            upload.client = restored.test_client()
            assert upload.download().data == upload.data
    finally:
        close_app(restored)


def test_detailed_health_reports_the_blob_store(backend: Flask) -> None:
    reply = backend.test_client().get("/health/detailed")

    check = reply.get_json()["checks"]["blob_store"]
    assert check["ok"] is True
    assert check["kind"] == backend.extensions["blob_store"].kind


# --- what the other branches added, over both stores ------------------------------------------------------
@pytest.fixture(params=["local", "s3"])
def two_hosts(
    request: pytest.FixtureRequest, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> tuple[Flask, Flask]:
    """Two app instances on one state database and one blob store (one storage root, or one bucket)."""
    if request.param == "local":
        return make_app(), make_app()
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{seaweedfs.new_bucket()}/server"
    return make_app(blob_store_uri=uri), make_app(blob_store_uri=uri)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(300_000, 16 * 1024), (2 * MIN_PART_SIZE + 77, MIN_PART_SIZE)],  # S3: chunk objects; multipart parts
)
def test_a_finalize_attempt_taken_over_midway_changes_and_deletes_nothing(
    two_hosts: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch, size: int, chunk_size: int
) -> None:
    """A stalls while compressing; B takes over and completes; A wakes: its copy never becomes visible."""
    first, second = two_hosts
    data = (b"robot telemetry 0123456789 " * (size // 27 + 1))[:size]
    upload = _upload(first, data, chunk_size, compression=True)
    _send(upload)
    assert upload.finalize().status_code == 202
    real_iter = finalize.iter_decompressed
    taken_over: list[bool] = []

    def stall_once(source: IO[bytes], codec: Codec) -> Iterator[bytes]:
        for piece in real_iter(source, codec):
            if not taken_over:  # A's first read: its lease runs out, B runs the whole job meanwhile
                taken_over.append(True)
                pass_database_time(first.extensions["state_store"], first.extensions["server_config"].job_lease + 1)
                assert second.extensions["job_runner"].run_once() is True
            yield piece

    monkeypatch.setattr(finalize, "iter_decompressed", stall_once)

    assert first.extensions["job_runner"].run_once() is True  # A's stale attempt ends without a trace
    assert taken_over == [True]

    status = upload.status()
    assert (status["state"], status["codec"], status["verified"]) == ("complete", "zstd", True)
    assert upload.download().data == data
    blobs = first.extensions["blob_store"]
    assert sorted(o.name for o in blobs.list_stored()) == [
        f"{upload.upload_id[:2]}/{upload.upload_id}.json",
        f"{upload.upload_id[:2]}/{upload.upload_id}.zst",
    ]
    assert blobs.part_ages() == {}
    if isinstance(blobs, S3BlobStore):  # A's staged multipart upload was aborted, not left behind
        assert blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", []) == []
    else:
        assert list(blobs.staging_dir.iterdir()) == []


def test_chunk_pieces_where_the_store_takes_them_and_whole_chunks_where_it_does_not(backend: Flask) -> None:
    """S3 refuses pieces with the 400 the client answers by sending whole chunks (core/client/job.py)."""
    data = os.urandom(4 * MIN_PIECE_SIZE + 100)
    upload = _upload(backend, data, 4 * MIN_PIECE_SIZE)
    chunk = upload.piece(0)
    headers = {
        HEADER_CHUNK_OFFSET: "0",
        HEADER_PIECE_SHA256: hashlib.sha256(chunk[:MIN_PIECE_SIZE]).hexdigest(),
        HEADER_CHUNK_SHA256: hashlib.sha256(chunk).hexdigest(),
    }

    piece = upload.client.put(f"/upload/{upload.upload_id}/chunk/0", data=chunk[:MIN_PIECE_SIZE], headers=headers)

    features = upload.client.get("/health").get_json()["features"]
    if backend.extensions["blob_store"].supports_pieces:
        assert (piece.status_code, piece.get_json()["chunk_complete"]) == (201, False)
        assert "chunk-pieces" in features
    else:
        error = piece.get_json()["error"]
        assert (piece.status_code, error["code"], error["expected"]) == (400, "chunk_size_mismatch", len(chunk))
        assert ErrorCode.CHUNK_SIZE_MISMATCH.value in _PIECE_REFUSALS
        assert upload.status()["received"] == []
        assert "chunk-pieces" not in features
    _send(upload)  # whole chunks, as the client falls back to
    assert upload.finalize().status_code == 202
    assert backend.extensions["job_runner"].run_once() is True
    assert upload.download().data == data
