"""One contract for every blob store: local disk and S3 (a real SeaweedFS) must behave the same."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from core.protocol import Codec, MiB, chunk_count, chunk_length
from core.server.blobs import BlobStore, LocalBlobStore, PartMissing, StoreMisconfigured, StoreUnavailable
from core.server.blobs.s3 import MIN_PART_SIZE, S3BlobStore
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.seaweedfs import SeaweedFS

UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "store")
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    return S3BlobStore(seaweedfs.new_bucket(), "fleet/a", client=seaweedfs.client())


def _put_all(store: BlobStore, data: bytes, chunk_size: int, order: list[int], *, parallel: int = 1) -> None:
    def put(index: int) -> None:
        piece = data[index * chunk_size : index * chunk_size + chunk_length(len(data), chunk_size, index)]
        store.write_chunk(UPLOAD, index, index * chunk_size, io.BytesIO(piece), len(piece))

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, order))


def _assembled(store: BlobStore, upload_id: str = UPLOAD) -> bytes:
    with store.open_assembled(upload_id, upload_id) as fh:
        return fh.read()


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (3 * MIN_PART_SIZE + 123, MIN_PART_SIZE),  # chunk i is multipart part i+1
        (10_000, 1024),  # chunks under S3's 5 MiB part floor: objects, copied together at finalize
        (700, 4096),  # one short chunk
        (0, 1024),  # an empty file
    ],
)
def test_chunks_written_in_any_order_and_in_parallel_assemble_byte_identical(
    store: BlobStore, size: int, chunk_size: int
) -> None:
    data = random.Random(size).randbytes(size)
    order = list(range(chunk_count(size, chunk_size)))
    random.Random(1).shuffle(order)
    store.create_part(UPLOAD, size, chunk_size)

    _put_all(store, data, chunk_size, order, parallel=4)

    assert store.assemble(UPLOAD, UPLOAD, chunks=len(order)) is True
    assert hashlib.sha256(_assembled(store)).hexdigest() == hashlib.sha256(data).hexdigest()
    store.keep_assembled(UPLOAD, UPLOAD)
    store.remove_part(UPLOAD)
    assert store.stored_size(UPLOAD, Codec.NONE) == size


@pytest.mark.parametrize("chunk_size", [MIN_PART_SIZE, 1024])  # S3: multipart parts, or objects joined
def test_a_part_of_unknown_size_takes_fewer_chunks_than_its_bound_and_a_short_tail(
    store: BlobStore, chunk_size: int
) -> None:
    """tus Upload-Defer-Length: the part is prepared for a bound (MAX_FILE_SIZE); the real file is smaller."""
    data = os.urandom(2 * chunk_size + 10)
    store.create_part(UPLOAD, 1000 * chunk_size, chunk_size, size_known=False)
    if isinstance(store, LocalBlobStore):
        assert store.part_path(UPLOAD).stat().st_size == 0  # nothing is sized to the bound
    _put_all(store, data, chunk_size, [0, 1, 2])

    assert store.assemble(UPLOAD, UPLOAD, chunks=3) is True
    assert _assembled(store) == data


def test_assembling_twice_is_safe(store: BlobStore) -> None:
    """A finalize attempt that crashed after assembling is simply repeated."""
    data = os.urandom(3000)
    store.create_part(UPLOAD, len(data), 1000)
    _put_all(store, data, 1000, [2, 0, 1])

    store.assemble(UPLOAD, UPLOAD, chunks=3)
    store.assemble(UPLOAD, UPLOAD, chunks=3)

    assert _assembled(store) == data


def test_a_rewritten_chunk_replaces_the_earlier_bytes(store: BlobStore) -> None:
    store.create_part(UPLOAD, 20, 10)
    store.write_chunk(UPLOAD, 0, 0, io.BytesIO(b"x" * 10), 10)
    _put_all(store, b"a" * 10 + b"b" * 10, 10, [1, 0])

    store.assemble(UPLOAD, UPLOAD, chunks=2)

    assert _assembled(store) == b"a" * 10 + b"b" * 10


def test_a_chunk_for_a_removed_part_raises_part_missing(store: BlobStore) -> None:
    store.create_part(UPLOAD, 20, 10)
    store.remove_part(UPLOAD)
    store.remove_part(UPLOAD)  # idempotent

    with pytest.raises(PartMissing, match=UPLOAD):
        store.write_chunk(UPLOAD, 0, 0, io.BytesIO(b"x" * 10), 10)
    with pytest.raises(PartMissing):
        store.assemble(UPLOAD, UPLOAD, chunks=2)


def lose_part(store: BlobStore, upload_id: str = UPLOAD) -> None:
    """What a disk failure or an operator's cleanup does behind the server's back."""
    if isinstance(store, LocalBlobStore):
        store.part_path(upload_id).unlink()
        return
    assert isinstance(store, S3BlobStore)
    for upload in store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []):
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for obj in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        if "/chunks/" in obj["Key"]:
            store.client.delete_object(Bucket=store.bucket, Key=obj["Key"])


@pytest.mark.parametrize("chunk_size", [MIN_PART_SIZE, 1024])
def test_a_lost_part_raises_part_missing_at_assembly(store: BlobStore, chunk_size: int) -> None:
    size = 2 * chunk_size
    store.create_part(UPLOAD, size, chunk_size)
    _put_all(store, bytes(size), chunk_size, [0, 1])
    lose_part(store)

    with pytest.raises(PartMissing, match=UPLOAD):
        store.assemble(UPLOAD, UPLOAD, chunks=2)


def test_staged_blob_appears_only_when_the_block_succeeds(store: BlobStore) -> None:
    def fail_halfway() -> None:
        with store.staging(UPLOAD, Codec.ZSTD) as out:
            out.write(b"half a file")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert store.stored_size(UPLOAD, Codec.ZSTD) is None

    with store.staging(UPLOAD, Codec.ZSTD) as out:
        for _ in range(3):
            out.write(b"z" * MiB * 3)  # crosses several 8 MiB multipart parts on S3

    assert store.stored_size(UPLOAD, Codec.ZSTD) == 9 * MiB


def test_stored_blob_reads_ranges_and_keeps_its_sidecar(store: BlobStore) -> None:
    data = os.urandom(100_000)
    with store.staging(UPLOAD, Codec.GZIP) as out:
        out.write(data)
    store.write_sidecar(UPLOAD, {"codec": "gzip", "sha256": hashlib.sha256(data).hexdigest(), "metadata": {"a": 1}})

    with store.open_blob(UPLOAD, Codec.GZIP) as fh:
        assert fh.read() == data
    with store.open_blob(UPLOAD, Codec.GZIP, 99_990) as fh:
        assert fh.read() == data[99_990:]
    with store.open_blob(UPLOAD, Codec.GZIP, 10, 20) as fh:
        assert fh.read() == data[10:30]
    assert store.read_sidecar(UPLOAD)["metadata"] == {"a": 1}
    assert store.stored_size(UPLOAD, Codec.NONE) is None


def test_delete_removes_every_codec_and_the_sidecar_only_of_that_blob(store: BlobStore) -> None:
    for blob in (UPLOAD, OTHER):
        with store.staging(blob, Codec.ZSTD) as out:
            out.write(b"x")
        store.write_sidecar(blob, {"blob": blob})

    store.delete(UPLOAD)
    store.delete(UPLOAD)  # idempotent

    assert store.stored_size(UPLOAD, Codec.ZSTD) is None
    with pytest.raises(FileNotFoundError):
        store.read_sidecar(UPLOAD)
    assert [o.name for o in store.list_stored()] == [f"fe/{OTHER}.json", f"fe/{OTHER}.zst"]


def test_stored_objects_can_be_listed_copied_out_and_written_back(store: BlobStore) -> None:
    with store.staging(UPLOAD, Codec.NONE) as out:
        out.write(b"raw bytes")
    store.write_sidecar(UPLOAD, {"x": 1})
    copies = {}
    for obj in store.list_stored():
        with store.read_stored(obj.name) as fh:
            copies[obj.name] = fh.read()
        assert len(copies[obj.name]) == obj.size
    store.delete(UPLOAD)

    for name, data in copies.items():
        store.write_stored(name, io.BytesIO(data))

    with store.open_blob(UPLOAD, Codec.NONE) as fh:
        assert fh.read() == b"raw bytes"


def test_idle_parts_are_listed_for_the_orphan_sweep(store: BlobStore) -> None:
    store.create_part(UPLOAD, 10, 10)
    store.write_chunk(UPLOAD, 0, 0, io.BytesIO(b"x" * 10), 10)

    assert UPLOAD not in set(store.parts_idle_since(time.time() - 3600))
    assert UPLOAD in set(store.parts_idle_since(time.time() + 3600))
    store.remove_part(UPLOAD)
    assert UPLOAD not in set(store.parts_idle_since(time.time() + 3600))


def test_has_blob_holds_only_for_the_stored_size(store: BlobStore) -> None:
    """What deduplication relies on: a stored file that is there with the size its record says."""
    assert store.has_blob(UPLOAD, Codec.ZSTD, 5) is False
    with store.staging(UPLOAD, Codec.ZSTD) as out:
        out.write(b"12345")

    assert store.has_blob(UPLOAD, Codec.ZSTD, 5) is True
    assert store.has_blob(UPLOAD, Codec.ZSTD, 4) is False
    assert store.has_blob(UPLOAD, Codec.NONE, 5) is False


def test_part_ages_name_every_upload_with_received_data(store: BlobStore) -> None:
    store.create_part(UPLOAD, 10, 10)
    store.write_chunk(UPLOAD, 0, 0, io.BytesIO(b"x" * 10), 10)

    now = time.time()
    assert 0 <= store.part_ages(now + 3600)[UPLOAD] - 3600 < 600  # a few seconds old, plus the hour
    assert set(store.part_ages()) == {UPLOAD}
    store.remove_part(UPLOAD)
    assert store.part_ages() == {}


def test_an_attempt_that_fails_never_touches_another_attempts_staged_output(store: BlobStore) -> None:
    """Two finalize attempts of one blob at once (one stalled past its lease): each stages on its own."""
    stale = store.staging(UPLOAD, Codec.GZIP, attempt=1)
    stale.__enter__().write(b"a" * 9 * MiB)  # over one 8 MiB multipart part on S3

    with store.staging(UPLOAD, Codec.GZIP, attempt=2) as out:
        out.write(b"b" * 9 * MiB)
    stale.__exit__(RuntimeError, RuntimeError("fenced"), None)  # the stale attempt gives up

    with store.open_blob(UPLOAD, Codec.GZIP) as fh:
        assert fh.read() == b"b" * 9 * MiB
    store.write_sidecar(UPLOAD, {"attempt": 1}, attempt=1)
    store.write_sidecar(UPLOAD, {"attempt": 2}, attempt=2)
    assert store.read_sidecar(UPLOAD) == {"attempt": 2}


def test_stale_staging_is_removed_but_received_data_is_kept(store: BlobStore) -> None:
    """What a killed finalize attempt leaves (its staged output, never completed) goes; an upload's chunks stay."""
    data = os.urandom(MIN_PART_SIZE + 10)
    store.create_part(OTHER, len(data), MIN_PART_SIZE)  # chunk i is multipart part i+1 on S3
    store.write_chunk(OTHER, 0, 0, io.BytesIO(data[:MIN_PART_SIZE]), MIN_PART_SIZE)
    killed = store.staging(UPLOAD, Codec.ZSTD, attempt=3)
    killed.__enter__().write(b"z" * 9 * MiB)  # the process dies here: no exit, no cleanup

    assert store.remove_stale_staging(3600) == 0  # a live attempt writes on
    assert store.remove_stale_staging(-60) == 1  # every cut-off passed
    assert store.remove_stale_staging(-60) == 0

    store.write_chunk(OTHER, 1, MIN_PART_SIZE, io.BytesIO(data[MIN_PART_SIZE:]), 10)
    store.assemble(OTHER, OTHER, chunks=2)
    assert _assembled(store, OTHER) == data
    assert store.stored_size(UPLOAD, Codec.ZSTD) is None
    killed.__exit__(RuntimeError, RuntimeError("killed"), None)


def test_a_fence_that_refuses_keeps_the_assembled_file_out_of_the_store(store: BlobStore) -> None:
    """A finalize attempt taken over while assembling makes nothing visible; the current attempt then can."""
    data = os.urandom(3000)
    store.create_part(UPLOAD, len(data), 1000)
    _put_all(store, data, 1000, [1, 2, 0])

    def taken_over() -> None:
        raise RuntimeError("stale")

    with contextlib.suppress(RuntimeError):  # the local store has nothing to make visible: no fence needed
        store.assemble(UPLOAD, UPLOAD, chunks=3, fence=taken_over)
    assert store.stored_size(UPLOAD, Codec.NONE) is None

    assert store.assemble(UPLOAD, UPLOAD, chunks=3) is True
    assert _assembled(store) == data


def test_received_bytes_read_back_across_chunks(store: BlobStore) -> None:
    data = os.urandom(2500)
    store.create_part(UPLOAD, len(data), 1000)  # on S3: chunk objects, which can be read back
    _put_all(store, data, 1000, [2, 0, 1])

    assert b"".join(store.read_part(UPLOAD, 900, 1200)) == data[900:2100]
    assert b"".join(store.read_part(UPLOAD, 0, 2500)) == data
    store.remove_part(UPLOAD)
    with pytest.raises(PartMissing):
        b"".join(store.read_part(UPLOAD, 0, 10))


def test_pieces_land_in_place_where_the_store_takes_them(store: BlobStore) -> None:
    """Local disk keeps a partial chunk; S3 cannot (a multipart part is sent whole), so it refuses pieces."""
    store.create_part(UPLOAD, 20, 20)
    if not store.supports_pieces:
        with pytest.raises(NotImplementedError, match="whole chunks"):
            store.write_piece(UPLOAD, 0, io.BytesIO(b"x" * 10), 10)
        return
    store.write_piece(UPLOAD, 10, io.BytesIO(b"b" * 10), 10)
    store.write_piece(UPLOAD, 0, io.BytesIO(b"a" * 10), 10)

    assert b"".join(store.read_part(UPLOAD, 0, 20)) == b"a" * 10 + b"b" * 10


def another_attempt_stores_it_right_after_this_check(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two finalize attempts of one upload (the first's lease ran out): the other renames the part into
    the store right after this attempt looks for the part file, or right before it opens it."""
    part, real_exists, real_open = store.part_path(UPLOAD), Path.exists, Path.open

    def other_attempt() -> None:
        monkeypatch.setattr(Path, "exists", real_exists)
        monkeypatch.setattr(Path, "open", real_open)
        store.store_part(UPLOAD, UPLOAD)

    def exists(path: Path) -> bool:
        found = real_exists(path)
        if found and path == part:
            other_attempt()
        return found

    def open_(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == part:
            other_attempt()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize("step", ["keep", "read"])
def test_an_attempt_overtaken_by_another_storing_the_same_part_still_finds_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    store = LocalBlobStore(tmp_path / "store")
    data = os.urandom(3000)
    store.create_part(UPLOAD, len(data), 1000)
    _put_all(store, data, 1000, [0, 1, 2])
    assert store.assemble(UPLOAD, UPLOAD, chunks=3) is True
    another_attempt_stores_it_right_after_this_check(store, monkeypatch)

    if step == "keep":
        store.keep_assembled(UPLOAD, UPLOAD)
    else:
        assert _assembled(store) == data

    assert _assembled(store) == data
    assert store.stored_size(UPLOAD, Codec.NONE) == len(data)


def test_s3_cannot_read_back_the_parts_of_an_unfinished_multipart_upload(seaweedfs: SeaweedFS) -> None:
    store = S3BlobStore(seaweedfs.new_bucket(), client=seaweedfs.client())
    store.create_part(UPLOAD, MIN_PART_SIZE + 1, MIN_PART_SIZE)

    assert store.supports_pieces is False
    with pytest.raises(NotImplementedError):
        b"".join(store.read_part(UPLOAD, 0, 10))


# --- S3 only: what an object store can do that a disk cannot --------------------------------------------
@pytest.mark.parametrize("chunk_size", [MIN_PART_SIZE, 1024])
def test_a_chunk_that_never_reached_s3_is_named_at_assembly(seaweedfs: SeaweedFS, chunk_size: int) -> None:
    store = S3BlobStore(seaweedfs.new_bucket(), "", client=seaweedfs.client())
    store.create_part(UPLOAD, 2 * chunk_size, chunk_size)
    _put_all(store, bytes(2 * chunk_size), chunk_size, [1])

    with pytest.raises(PartMissing, match="chunk 0"):
        store.assemble(UPLOAD, UPLOAD, chunks=2)


def test_a_missing_bucket_is_a_clear_error_at_start_up(seaweedfs: SeaweedFS) -> None:
    with pytest.raises(StoreMisconfigured, match=r"bucket 'no-such-bucket', which does not exist"):
        S3BlobStore("no-such-bucket", "", client=seaweedfs.client())


@pytest.fixture
def proxied_s3(seaweedfs: SeaweedFS) -> Iterator[tuple[S3BlobStore, FaultProxy]]:
    with FaultProxy(seaweedfs.ports["s3"]) as proxy:
        client = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=5),
        )
        yield S3BlobStore(seaweedfs.new_bucket(), "p", client=client), proxy


def test_an_unreachable_store_raises_store_unavailable_and_works_again_afterwards(
    proxied_s3: tuple[S3BlobStore, FaultProxy],
) -> None:
    store, proxy = proxied_s3
    store.create_part(UPLOAD, 20, 10)
    proxy.drop_after_bytes = 0  # every connection is cut at once: the store is down

    with pytest.raises(StoreUnavailable, match=r"unreachable|failed"):
        store.write_chunk(UPLOAD, 0, 0, io.BytesIO(b"a" * 10), 10)

    proxy.drop_after_bytes = None
    _put_all(store, b"a" * 10 + b"b" * 10, 10, [0, 1])
    store.assemble(UPLOAD, UPLOAD, chunks=2)
    assert _assembled(store) == b"a" * 10 + b"b" * 10


def test_the_sweep_can_abort_an_abandoned_multipart_upload(seaweedfs: SeaweedFS) -> None:
    client = seaweedfs.client()
    store = S3BlobStore(seaweedfs.new_bucket(), "", client=client)
    store.create_part(UPLOAD, 2 * MIN_PART_SIZE, MIN_PART_SIZE)
    store.write_chunk(UPLOAD, 0, 0, io.BytesIO(bytes(MIN_PART_SIZE)), MIN_PART_SIZE)
    # A finalize that crashed while streaming the compressed copy leaves its multipart upload too.
    client.create_multipart_upload(Bucket=store.bucket, Key=f"store/01/{UPLOAD}.zst")

    assert list(store.parts_idle_since(time.time() + 60)) == [UPLOAD]
    store.remove_part(UPLOAD)

    assert client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=store.bucket).get("KeyCount", 0) == 0
