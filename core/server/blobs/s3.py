"""Bytes in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, SeaweedFS) through boto3.

No app host keeps anything on local disk but temporary files, so any host can take
any chunk and any finalize job. Keys under ``s3://BUCKET/PREFIX/``::

    uploads/<upload_id>.json         how the upload's chunks are kept (written at init)
    chunks/<upload_id>/<index>       one object per chunk, for chunks under 5 MiB
    store/<id[:2]>/<blob_id>         the raw file: the target of the upload's multipart upload
    store/<id[:2]>/<blob_id>.zst|.gz the compressed file, when compressing paid
    store/<id[:2]>/<blob_id>.json    the sidecar: codec, sizes, sha256, metadata

S3 refuses multipart parts under 5 MiB except the last. Chunks of at least 5 MiB
(the default is 8 MiB) go straight into the multipart upload of the raw file,
chunk i as part i+1. Smaller chunks become objects of their own, and finalize
copies them, in order, into the multipart upload in 8 MiB parts: one extra pass
over the bytes, paid only by uploads that chose small chunks.

Finalize attempts stage apart: every staged write (the assembly of small chunks, a
compressed copy) is a multipart upload of the attempt's own, invisible until the
attempt completes it after its fence check; the sweep aborts those of attempts that
died (``remove_stale_staging``). Chunk pieces are refused (``supports_pieces`` is
False): a multipart part is sent whole and cannot be read back before the upload
completes, so a partial chunk has nowhere durable to wait. The client answers the
refusal (400 ``chunk_size_mismatch``) by sending whole chunks.

Endpoint, credentials and region come from boto3's standard variables
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, or an instance role).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.protocol import Codec, MiB
from core.server.blobs.base import (
    BlobStore,
    PartMissing,
    StoredObject,
    StoreMisconfigured,
    StoreUnavailable,
    checked,
    is_valid_id,
    no_fence,
)

log = logging.getLogger("upload_server")

MIN_PART_SIZE = 5 * MiB  # S3's floor for every multipart part but the last
MAX_PARTS = 10_000  # S3's ceiling of parts per multipart upload
ASSEMBLY_PART_SIZE = 8 * MiB  # part size when finalize copies small chunk objects together
LAYOUT_PARTS = "parts"
LAYOUT_CHUNKS = "chunks"
_MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
_LAYOUT_CACHE = 4096

T = TypeVar("T")


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _is_missing(err: ClientError) -> bool:
    return _code(err) in _MISSING


class S3BlobStore(BlobStore):
    """One bucket (and key prefix) shared by every app host."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        if not bucket:
            msg = "BLOB_STORE_URI s3:// needs a bucket name: s3://BUCKET/PREFIX"
            raise StoreMisconfigured(msg)
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.client(
            "s3",
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
            ),
        )
        self._layouts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._layouts_lock = threading.Lock()
        self._locks_lock = threading.Lock()
        self._chunk_locks: dict[tuple[str, int], threading.Lock] = {}
        self._check_bucket()

    # --- keys and error translation ---------------------------------------------
    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _marker_key(self, upload_id: str) -> str:
        return self._key("uploads", f"{checked(upload_id)}.json")

    def _chunk_key(self, upload_id: str, index: int) -> str:
        return self._key("chunks", checked(upload_id), f"{int(index):08d}")

    def _store_key(self, name: str) -> str:
        return self._key("store", name)

    def _raw_key(self, blob_id: str) -> str:
        return self._store_key(self.blob_name(blob_id, Codec.NONE))

    def _call(self, what: str, operation: Callable[..., T], **kwargs: Any) -> T:
        """One S3 request; unreachable or overloaded stores become ``StoreUnavailable`` (503 to clients)."""
        try:
            return operation(Bucket=self.bucket, **kwargs)
        except ClientError as err:
            if _code(err) in _UNAVAILABLE:
                msg = f"object store {self.location} unavailable during {what}: {_code(err)}"
                raise StoreUnavailable(msg) from err
            if _code(err) == "NoSuchBucket":
                msg = f"bucket {self.bucket!r} does not exist (BLOB_STORE_URI={self.location})"
                raise StoreUnavailable(msg) from err
            raise
        except BotoCoreError as err:  # unreachable endpoint, timeouts, missing credentials
            msg = f"object store {self.location} failed during {what}: {type(err).__name__}: {err}"
            raise StoreUnavailable(msg) from err

    def _check_bucket(self) -> None:
        """A missing bucket is a configuration error: say so at start-up instead of on every request."""
        try:
            self._call("start-up check", self.client.head_bucket)
        except ClientError as err:
            if _code(err) in {"404", "NoSuchBucket", "NotFound"}:
                msg = (
                    f"BLOB_STORE_URI names bucket {self.bucket!r}, which does not exist at the S3 endpoint "
                    "(AWS_ENDPOINT_URL_S3); create it first"
                )
                raise StoreMisconfigured(msg) from err
            if _code(err) in {"403", "AccessDenied"}:
                msg = f"access to bucket {self.bucket!r} denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                raise StoreMisconfigured(msg) from err
            raise
        except StoreUnavailable as err:
            # A store down at boot must not stop the server: requests answer 503 until it is back.
            log.error("Blob store not reachable at start-up: %s", err)

    def check(self) -> None:
        self._call("health check", self.client.head_bucket)

    def _exists(self, key: str) -> int | None:
        try:
            head = self._call("head", self.client.head_object, Key=key)
        except ClientError as err:
            if _is_missing(err):
                return None
            raise
        return int(head["ContentLength"])

    def _delete(self, *keys: str) -> None:
        for start in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            if objects:
                self._call("delete", self.client.delete_objects, Delete={"Objects": objects, "Quiet": True})

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        token: dict[str, Any] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=prefix, **token)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _multipart_uploads(self, key_prefix: str) -> Iterator[dict[str, Any]]:
        marker: dict[str, Any] = {}
        while True:
            page = self._call("list multipart uploads", self.client.list_multipart_uploads, Prefix=key_prefix, **marker)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    # --- uploads in progress --------------------------------------------------------------
    def create_part(self, upload_id: str, size: int, chunk_size: int, *, size_known: bool = True) -> None:
        """The layout suits ``size``; a bound (not ``size_known``) fits any smaller size: fewer parts of that size."""
        chunks = max(1, -(-size // chunk_size)) if chunk_size else 1
        direct = chunks == 1 or (chunk_size >= MIN_PART_SIZE and chunks <= MAX_PARTS)
        layout: dict[str, Any] = {
            "layout": LAYOUT_PARTS if direct else LAYOUT_CHUNKS,
            "size": size,
            "chunk_size": chunk_size or size,
        }
        if direct:
            started = self._call(
                "create multipart upload", self.client.create_multipart_upload, Key=self._raw_key(upload_id)
            )
            layout["multipart_upload_id"] = started["UploadId"]
        body = json.dumps(layout).encode()
        self._call("write upload marker", self.client.put_object, Key=self._marker_key(upload_id), Body=body)
        self._remember(upload_id, layout)

    def _remember(self, upload_id: str, layout: dict[str, Any]) -> None:
        with self._layouts_lock:
            self._layouts[upload_id] = layout
            while len(self._layouts) > _LAYOUT_CACHE:
                self._layouts.popitem(last=False)

    def _layout(self, upload_id: str) -> dict[str, Any]:
        with self._layouts_lock:
            cached = self._layouts.get(upload_id)
        if cached is not None:
            return cached
        try:
            reply = self._call("read upload marker", self.client.get_object, Key=self._marker_key(upload_id))
        except ClientError as err:
            if _is_missing(err):
                raise PartMissing(upload_id, "its upload marker is not in the object store") from err
            raise
        layout: dict[str, Any] = json.loads(reply["Body"].read())
        self._remember(upload_id, layout)
        return layout

    def write_chunk(self, upload_id: str, index: int, offset: int, data: IO[bytes], length: int) -> None:
        layout = self._layout(upload_id)
        try:
            if layout["layout"] == LAYOUT_PARTS:
                self._call(
                    f"upload part {index + 1}",
                    self.client.upload_part,
                    Key=self._raw_key(upload_id),
                    UploadId=layout["multipart_upload_id"],
                    PartNumber=index + 1,
                    Body=data,
                    ContentLength=length,
                )
            else:
                self._call(
                    f"put chunk {index}",
                    self.client.put_object,
                    Key=self._chunk_key(upload_id, index),
                    Body=data,
                    ContentLength=length,
                )
        except ClientError as err:
            if _is_missing(err):
                self._forget(upload_id)
                raise PartMissing(upload_id, "its multipart upload no longer exists") from err
            raise

    def read_part(self, upload_id: str, offset: int, length: int) -> Iterator[bytes]:
        """Ranged GETs of the chunk objects of a small-chunk upload.

        The parts of an unfinished multipart upload cannot be read back (S3 has no such request),
        so uploads whose chunks went straight into one raise ``NotImplementedError``; nothing asks
        for them, since this store takes no pieces.
        """
        layout = self._layout(upload_id)
        if layout["layout"] != LAYOUT_CHUNKS:
            msg = "S3 cannot read the parts of an unfinished multipart upload back"
            raise NotImplementedError(msg)
        chunk_size, end = int(layout["chunk_size"]), min(offset + length, int(layout["size"]))
        while offset < end:
            index, within = divmod(offset, chunk_size)
            want = min(chunk_size - within, end - offset)
            try:
                with self._open(self._chunk_key(upload_id, index), within, want) as body:
                    while piece := body.read(MiB):
                        offset += len(piece)
                        yield piece
            except FileNotFoundError as err:
                raise PartMissing(upload_id, f"chunk {index} is not in the object store") from err

    def _forget(self, upload_id: str) -> None:
        with self._layouts_lock:
            self._layouts.pop(upload_id, None)

    def remove_part(self, upload_id: str) -> None:
        """Abort every unfinished multipart upload of this id (raw, compressed), delete chunk objects and marker."""
        raw = self._raw_key(upload_id)
        for upload in self._multipart_uploads(raw):
            with contextlib.suppress(ClientError):  # already completed or aborted elsewhere
                self._call(
                    "abort multipart upload",
                    self.client.abort_multipart_upload,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
        chunk_keys = [o["Key"] for o in self._list(self._key("chunks", checked(upload_id)) + "/")]
        self._delete(*chunk_keys, self._marker_key(upload_id))
        self._forget(upload_id)

    @contextlib.contextmanager
    def chunk_lock(self, upload_id: str, index: int) -> Iterator[None]:
        """Per process only: S3 has no locks. Two hosts writing the same chunk at once both send
        verified bytes; if they differ, one receipt wins and the whole-file sha256 at finalize
        refuses the mix, so a wrong copy is never reported verified."""
        checked(upload_id)
        with self._locks_lock:
            lock = self._chunk_locks.setdefault((upload_id, index), threading.Lock())
        with lock:
            yield
        with self._locks_lock:
            self._chunk_locks.pop((upload_id, index), None)

    def part_ages(self, now: float | None = None) -> dict[str, float]:
        """Uploads with a marker, chunk objects or an unfinished multipart upload, aged by the newest of them."""
        now = time.time() if now is None else now
        candidates: list[tuple[str, float]] = []
        for obj in self._list(self._key("uploads") + "/"):
            candidates.append((obj["Key"].rsplit("/", 1)[-1].removesuffix(".json"), obj["LastModified"].timestamp()))
        for obj in self._list(self._key("chunks") + "/"):
            candidates.append((obj["Key"].split("/")[-2], obj["LastModified"].timestamp()))
        for upload in self._multipart_uploads(self._key("store") + "/"):
            name = upload["Key"].rsplit("/", 1)[-1].split(".")[0]  # <id>, <id>.zst, <id>.gz
            candidates.append((name, upload["Initiated"].timestamp()))
        newest: dict[str, float] = {}
        for upload_id, when in candidates:
            newest[upload_id] = max(when, newest.get(upload_id, 0.0))
        return {upload_id: now - when for upload_id, when in newest.items() if is_valid_id(upload_id)}

    def remove_stale_staging(self, older_than: float) -> int:
        """Abort staged multipart uploads (assemblies, compressed copies) without a part for ``older_than`` seconds.

        An upload's own multipart upload (the chunks of an upload in progress) is received data, not
        staging: it is recognised by the id its marker names and left alone.
        """
        cutoff, removed = time.time() - older_than, 0
        for upload in list(self._multipart_uploads(self._key("store") + "/")):
            if self._is_received_data(upload) or self._last_activity(upload) >= cutoff:
                continue
            self._abort(upload["Key"], upload["UploadId"])
            removed += 1
            log.info("Aborted stale staged multipart upload of %s (%s)", upload["Key"], upload["UploadId"])
        return removed

    def _is_received_data(self, upload: dict[str, Any]) -> bool:
        name = upload["Key"].rsplit("/", 1)[-1]
        if not is_valid_id(name) or upload["Key"] != self._raw_key(name):
            return False  # a compressed copy (<id>.zst, <id>.gz) or a foreign key
        try:
            layout = self._layout(name)
        except PartMissing:
            return False  # no marker: the upload is gone, this is an assembly left behind
        return bool(layout.get("multipart_upload_id") == upload["UploadId"])

    def _last_activity(self, upload: dict[str, Any]) -> float:
        """When the multipart upload last received a part (or was started): a live attempt keeps sending parts."""
        try:
            parts = self._parts(upload["Key"], upload["UploadId"])
        except ClientError as err:
            if _is_missing(err):
                return time.time()  # completed or aborted meanwhile: nothing to do
            raise
        return max([upload["Initiated"].timestamp()] + [p["LastModified"].timestamp() for p in parts])

    # --- finalize ----------------------------------------------------------------------------
    def assemble(self, upload_id: str, blob_id: str, *, chunks: int, fence: Callable[[], None] = no_fence) -> bool:
        layout = self._layout(upload_id)
        if layout["layout"] == LAYOUT_CHUNKS:
            self._assemble_chunks(upload_id, blob_id, chunks, fence)
            return True
        raw = self._raw_key(upload_id)
        try:
            parts = self._parts(raw, layout["multipart_upload_id"])
        except ClientError as err:
            if _is_missing(err) and self._exists(raw) is not None:
                return True  # completed by an earlier attempt that crashed afterwards
            if _is_missing(err):
                raise PartMissing(upload_id, "its multipart upload no longer exists") from err
            raise
        have = {p["PartNumber"] for p in parts}
        lost = [i for i in range(chunks) if i + 1 not in have]
        if lost:
            raise PartMissing(upload_id, f"chunk {lost[0]} (part {lost[0] + 1}) is not in the multipart upload")
        listed = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts if p["PartNumber"] <= chunks]
        fence()
        if layout.get("size") == 0:
            # S3 cannot complete a multipart upload of one empty part everywhere: store the empty object directly.
            self._call("put empty file", self.client.put_object, Key=raw, Body=b"")
            self._abort(raw, layout["multipart_upload_id"])
            return True
        self._call(
            "complete multipart upload",
            self.client.complete_multipart_upload,
            Key=raw,
            UploadId=layout["multipart_upload_id"],
            MultipartUpload={"Parts": listed},
        )
        return True

    def _abort(self, key: str, multipart_upload_id: str) -> None:
        with contextlib.suppress(ClientError):
            self._call(
                "abort multipart upload",
                self.client.abort_multipart_upload,
                Key=key,
                UploadId=multipart_upload_id,
            )

    def _parts(self, key: str, multipart_upload_id: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = self._call(
                "list parts",
                self.client.list_parts,
                Key=key,
                UploadId=multipart_upload_id,
                PartNumberMarker=marker,
            )
            parts.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _assemble_chunks(self, upload_id: str, blob_id: str, chunks: int, fence: Callable[[], None]) -> None:
        """Copy small chunk objects, in order, into the raw file's multipart upload in 8 MiB parts."""
        present = {int(o["Key"].rsplit("/", 1)[-1]) for o in self._list(self._key("chunks", upload_id) + "/")}
        lost = [i for i in range(chunks) if i not in present]
        if lost:
            raise PartMissing(upload_id, f"chunk {lost[0]} is not in the object store")
        with self._writer(self._raw_key(blob_id)) as out:
            for index in range(chunks):
                try:
                    reply = self._call("read chunk", self.client.get_object, Key=self._chunk_key(upload_id, index))
                except ClientError as err:
                    if _is_missing(err):
                        raise PartMissing(upload_id, f"chunk {index} disappeared during assembly") from err
                    raise
                body = reply["Body"]
                while piece := body.read(MiB):
                    out.write(piece)
            fence()  # before the writer completes: a stale attempt's assembly stays invisible

    @contextlib.contextmanager
    def open_assembled(self, upload_id: str, blob_id: str, length: int | None = None) -> Iterator[IO[bytes]]:
        try:
            with self._open(self._raw_key(blob_id), 0, length) as body:
                yield body
        except FileNotFoundError as err:
            raise PartMissing(upload_id, "the assembled file is not in the object store") from err

    def keep_assembled(self, upload_id: str, blob_id: str) -> None:
        """The multipart upload already wrote the raw file where a stored blob belongs."""

    def discard_assembled(self, upload_id: str, blob_id: str) -> None:
        self._delete(self._raw_key(blob_id))

    @contextlib.contextmanager
    def staging(self, blob_id: str, codec: Codec, *, attempt: int = 0) -> Iterator[IO[bytes]]:
        """The attempt's own multipart upload of the stored key: nothing is visible until it completes."""
        with self._writer(self._store_key(self.blob_name(blob_id, codec))) as out:
            yield out  # type: ignore[misc]

    @contextlib.contextmanager
    def _writer(self, key: str) -> Iterator[_MultipartWriter]:
        """A streamed upload of ``key``: completed on success, aborted on error, one PUT if it stays small."""
        writer = _MultipartWriter(self, key)
        try:
            yield writer
            writer.complete()
        except BaseException:
            writer.abort()
            raise

    # --- stored blobs ------------------------------------------------------------------------
    def write_sidecar(self, blob_id: str, document: dict[str, Any], *, attempt: int = 0) -> None:
        """One PUT, atomic in S3: no temporary object, so ``attempt`` needs none either."""
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        key = self._store_key(self.sidecar_name(blob_id))
        self._call("write sidecar", self.client.put_object, Key=key, Body=body, ContentType="application/json")

    def read_sidecar(self, blob_id: str) -> dict[str, Any]:
        with self._open(self._store_key(self.sidecar_name(blob_id))) as body:
            document: dict[str, Any] = json.loads(body.read())
        return document

    def stored_size(self, blob_id: str, codec: Codec) -> int | None:
        return self._exists(self._store_key(self.blob_name(blob_id, codec)))

    def open_blob(
        self, blob_id: str, codec: Codec, start: int = 0, length: int | None = None
    ) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self._open(self._store_key(self.blob_name(blob_id, codec)), start, length)

    @contextlib.contextmanager
    def _open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[IO[bytes]]:
        """A streamed GET (a ranged one when only part is wanted); the connection is released on exit."""
        extra: dict[str, Any] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            if length == 0:
                yield _Empty()  # type: ignore[misc]
                return
            extra["Range"] = f"bytes={start}-{end}"
        try:
            reply = self._call("read", self.client.get_object, Key=key, **extra)
        except ClientError as err:
            if _is_missing(err):
                raise FileNotFoundError(key) from err
            raise
        body = reply["Body"]
        try:
            yield body
        finally:
            body.close()

    def delete(self, blob_id: str) -> None:
        names = [self.blob_name(blob_id, codec) for codec in Codec] + [self.sidecar_name(blob_id)]
        self._delete(*(self._store_key(n) for n in names))

    def list_stored(self) -> Iterator[StoredObject]:
        root = self._key("store") + "/"
        for obj in self._list(root):
            yield StoredObject(obj["Key"][len(root) :], int(obj["Size"]))

    def read_stored(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self._open(self._store_key(name))

    def write_stored(self, name: str, data: IO[bytes]) -> None:
        with self._writer(self._store_key(name)) as out:
            while piece := data.read(MiB):
                out.write(piece)


class _Empty:
    def read(self, _size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _MultipartWriter:
    """File-like sink that sends every ASSEMBLY_PART_SIZE bytes as one part: never a whole file in memory."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._id = ""  # the multipart upload starts with the first full part
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._buffer += data
        while len(self._buffer) >= ASSEMBLY_PART_SIZE:
            self._send(bytes(self._buffer[:ASSEMBLY_PART_SIZE]))
            del self._buffer[:ASSEMBLY_PART_SIZE]
        return len(data)

    def flush(self) -> None:
        """Parts go out when full; ``complete`` sends the rest (zstd and gzip call flush while writing)."""

    def _send(self, data: bytes) -> None:
        if not self._id:
            started = self._store._call(
                "create multipart upload", self._store.client.create_multipart_upload, Key=self._key
            )
            self._id = started["UploadId"]
        number = len(self._parts) + 1
        reply = self._store._call(
            f"upload part {number}",
            self._store.client.upload_part,
            Key=self._key,
            UploadId=self._id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})

    def complete(self) -> None:
        if not self._id:  # smaller than one part: a single PUT
            self._store._call("put", self._store.client.put_object, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._store._call(
            "complete multipart upload",
            self._store.client.complete_multipart_upload,
            Key=self._key,
            UploadId=self._id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        if self._id:
            self._store._abort(self._key, self._id)
