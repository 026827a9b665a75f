"""The upload service: init, chunk, status, finalize, abort, list, download and sweep, without any HTTP.

Routes translate requests into these calls; a CLI or a second protocol front
can reuse them. Every call takes the caller's ``Identity``: an upload of
another owner is reported exactly like a missing one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, BinaryIO, NoReturn

from core.checksums import ChunkChecksum, chunk_hasher, hex_digests_equal
from core.config import ServerConfig
from core.protocol import (
    HEADER_CHUNK_OFFSET,
    HEADER_CONTENT_MD5,
    MIN_PIECE_SIZE,
    ChunkAlgorithm,
    Codec,
    ErrorCode,
    KiB,
    MiB,
    UploadState,
    chunk_length,
)
from core.server import catalog, events
from core.server.blobs import BlobStore, PartMissing, is_valid_id
from core.server.compression import iter_decompressed
from core.server.errors import (
    ChecksumConflict,
    ChecksumMismatch,
    ChunkIndexOutOfRange,
    ChunkSizeMismatch,
    Conflict,
    Forbidden,
    InsufficientStorage,
    LengthRequired,
    NotFound,
    PartDataLost,
    UploadExpired,
    UploadIncomplete,
)
from core.server.identity import Identity
from core.server.state_store import StateStore, UploadQuery, UploadRecord
from core.server.validation import InitSpec

log = logging.getLogger("upload_server")

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
RETENTION_BATCH = 100
# The sweep deletes with admin rights under this name, so the audit line says who did it.
RETENTION_IDENTITY = Identity(name="retention", admin=True)
# Request bodies are read in 256 KiB pieces: under gunicorn's gthread body reader this measured
# ~1.5x the throughput of 64 KiB pieces at ~40% less CPU per GiB (bench/server_throughput.py).
BODY_READ_SIZE = 256 * KiB
# A chunk body is read and verified into a temporary buffer before any lock is taken: chunks up to
# this size stay in memory (the default 8 MiB chunk does), larger ones spill to a temporary file.
SPOOL_IN_MEMORY = 16 * MiB
# The receipt of a chunk whose PUT declared no checksum (and of every tus chunk): the cheap one, since a
# receipt only tells a resend of the same bytes from different ones; the copy is verified by its sha256.
RECEIPT_ALGORITHM = ChunkAlgorithm.CRC32C


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Disk full becomes 507: the client keeps its data and retries later; nothing was acknowledged."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL:
            msg = "the server's storage is full; retry later"
            raise InsufficientStorage(msg) from err
        raise


def isoformat(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def finalize_progress(record: UploadRecord) -> float:
    """How far the finalize job got (0..1): an empty file is done at once, one of unknown size not begun."""
    if not record.size_known:
        return 0.0
    return round(record.progress / record.filesize, 4) if record.filesize else 1.0


def is_expired(record: UploadRecord) -> bool:
    return record.state is UploadState.ABORTED and record.error_code == ErrorCode.UPLOAD_EXPIRED.value


@dataclass(frozen=True)
class Deletion:
    """What deleting a stored upload did: its new record and the bytes freed (0 if another upload shares the file)."""

    record: UploadRecord
    bytes_freed: int
    shared_with: str | None


def is_lost(record: UploadRecord) -> bool:
    """Aborted because the server lost its received data (a part file or multipart upload vanished)."""
    return record.state is UploadState.ABORTED and record.error_code == ErrorCode.PART_MISSING.value


def compression_ratio(record: UploadRecord) -> float | None:
    """original / stored size (2.0 = half the size); None until stored."""
    if record.stored_size is None:
        return None
    return round(record.filesize / record.stored_size, 3) if record.stored_size else 1.0


@dataclass(frozen=True)
class InitResult:
    record: UploadRecord
    resumed: bool
    # A verified copy of this owner has the init's size and fingerprint: the client may hash the bag and
    # finalize with its sha256 before sending any chunk (deduplicated if the sha256 matches too).
    dedup_candidate: bool = False


@dataclass(frozen=True)
class ChunkResult:
    record: UploadRecord
    index: int
    received: int
    duplicate: bool


@dataclass(frozen=True)
class PieceResult:
    """One stored piece of a chunk; ``complete`` once the chunk it ends is verified and recorded."""

    record: UploadRecord
    index: int
    offset: int
    length: int
    received: int  # chunks of the upload now received
    complete: bool
    duplicate: bool


@dataclass(frozen=True)
class Download:
    """A stored file ready to stream from its store: the stored bytes (``raw``) or the original bytes."""

    record: UploadRecord
    blobs: BlobStore
    raw: bool

    @property
    def size(self) -> int:
        return int(self.record.stored_size or 0) if self.raw else self.record.filesize

    @property
    def filename(self) -> str:
        suffix = {Codec.ZSTD: ".zst", Codec.GZIP: ".gz"}.get(self.record.codec or Codec.NONE, "")
        return self.record.filename + (suffix if self.raw else "")

    def chunks(self, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` (``length`` of them, or to the end), streamed from the store.

        Stored bytes are read with a ranged read; original bytes of a compressed file are
        decompressed from the beginning and the bytes before ``start`` skipped.
        """
        codec = self.record.codec or Codec.NONE
        blob_id = str(self.record.blob_id)
        if self.raw or codec is Codec.NONE:
            with self.blobs.open_blob(blob_id, codec, start, length) as stream:
                yield from iter_decompressed(stream, Codec.NONE)
            return
        left = self.size - start if length is None else length
        with self.blobs.open_blob(blob_id, codec) as stream:
            for piece in iter_decompressed(stream, codec):
                if start >= len(piece):
                    start -= len(piece)
                    continue
                piece = piece[start : start + left]
                start = 0
                left -= len(piece)
                yield piece
                if left <= 0:
                    return


class UploadService:
    """Upload sessions over a ``StateStore`` (what is known) and a ``BlobStore`` (the bytes)."""

    def __init__(
        self,
        config: ServerConfig,
        state: StateStore,
        blobs: BlobStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.blobs = blobs
        self.clock = clock
        self.wall_clock: Callable[[], float] = time.time
        # Set by the job runner so a finalize request wakes the local worker thread at once.
        self.on_job_queued: Callable[[], None] = lambda: None
        # Other stores' pruning, run by each sweep: each deletes rows older than its argument, returns how many.
        self.pruners: list[Callable[[float], int]] = []

    # --- lookups ---------------------------------------------------------------
    def get(self, identity: Identity, upload_id: str) -> UploadRecord:
        """The caller's upload; foreign and unknown ids are indistinguishable (404), swept ones are 410."""
        record = self.state.get_upload(upload_id) if is_valid_id(upload_id) else None
        return self._accessible(identity, upload_id, record)

    def _accessible(self, identity: Identity, upload_id: str, record: UploadRecord | None) -> UploadRecord:
        if record is None or not identity.may_access(record.owner):
            msg = f"upload {upload_id} not found"
            raise NotFound(msg)
        if is_expired(record):
            msg = f"upload {upload_id} expired after {self.config.upload_ttl:.0f}s without activity; start a new one"
            raise UploadExpired(msg)
        if is_lost(record):
            msg = f"the server lost the received data of upload {upload_id} ({record.error_message}); start a new one"
            raise PartDataLost(msg)
        return record

    def _require_state(self, record: UploadRecord, *states: UploadState) -> None:
        if record.state not in states:
            msg = f"upload {record.upload_id} is {record.state.value}"
            raise Conflict(msg, details={"state": record.state.value})

    # --- init --------------------------------------------------------------------
    def init_upload(self, identity: Identity, spec: InitSpec, *, resume: bool = True) -> InitResult:
        """A new upload, or (``resume``) the caller's unfinished upload of the same file and checksum.

        The tus front passes ``resume=False``: a tus client resumes through its own upload URL.
        """
        now = self.clock()
        if resume and (spec.md5 or spec.sha256 or spec.fingerprint):
            existing = self.state.find_resumable(
                owner=identity.name,
                filename=spec.filename,
                filesize=spec.filesize,
                chunk_size=spec.chunk_size,
                md5=spec.md5,
                sha256=spec.sha256,
                fingerprint=spec.fingerprint,
            )
            if existing is not None:
                log.info("Resumed upload: %s - ID: %s", existing.filename, existing.upload_id)
                self._emit_initialized(existing, resumed=True)
                return InitResult(existing, resumed=True)
        record = UploadRecord(
            upload_id=uuid.uuid4().hex,
            owner=identity.name,
            filename=spec.filename,
            filesize=spec.filesize,
            chunk_size=spec.chunk_size,
            chunks=spec.chunks,
            created_at=now,
            updated_at=now,
            md5=spec.md5,
            sha256=spec.sha256,
            compression=spec.compression,
            metadata=spec.metadata,
            fingerprint=spec.fingerprint,
        )
        # Owner-scoped (admins excepted): knowing a hash must not grant a copy of another robot's file.
        owner = None if identity.admin else identity.name
        duplicate = self._intact_duplicate(record, owner=owner) if record.size_known else None
        if duplicate is not None:
            return self._init_deduplicated(record, duplicate)
        candidate = False
        if not (spec.md5 or spec.sha256) and spec.fingerprint and record.size_known:
            candidate = self._intact_duplicate(record, owner=owner, fingerprint=spec.fingerprint) is not None
        # A size not known yet (tus Upload-Defer-Length) is checked against the disk when it is declared.
        self.require_free_disk(record, record.filesize if record.size_known else 0)
        with storage_errors():
            self.blobs.create_part(record.upload_id, record.filesize, record.chunk_size, size_known=record.size_known)
        try:
            with storage_errors():
                self.state.create_upload(record)
        except BaseException:
            self.blobs.remove_part(record.upload_id)
            raise
        log.info(
            "Initialized upload: %s (%s bytes, %s chunks) - ID: %s - Compression: %s",
            record.filename,
            record.filesize if record.size_known else "unknown",
            record.chunks if record.size_known else "unknown",
            record.upload_id,
            record.compression is not Codec.NONE,
        )
        self._emit_initialized(record, resumed=False)
        return InitResult(record, resumed=False, dedup_candidate=candidate)

    def _intact_duplicate(
        self, record: UploadRecord, owner: str | None, *, fingerprint: str | None = None
    ) -> UploadRecord | None:
        """A verified copy of ``record``'s content whose stored file is there with the size its record says.

        Answering ``complete`` from a record alone would spread the loss of one stored file to
        every later upload of the same content: the robots would delete their bags. With
        ``fingerprint`` (and no checksum on ``record``), only a candidate worth hashing the bag for.
        """
        candidates = self.state.find_duplicates(
            filesize=record.filesize, md5=record.md5, sha256=record.sha256, owner=owner, fingerprint=fingerprint
        )
        for candidate in candidates:
            if candidate.filesize != record.filesize or candidate.blob_id is None or candidate.stored_size is None:
                continue
            if self.blobs.has_blob(candidate.blob_id, candidate.codec or Codec.NONE, candidate.stored_size):
                return candidate
            log.warning(
                "Not deduplicating onto upload %s: its stored file is missing or has the wrong size",
                candidate.upload_id,
            )
        return None

    def require_free_disk(self, record: UploadRecord, needed: int) -> None:
        """507 while free space minus this file would fall below MIN_FREE_DISK: refuse before the disk fills.

        A full disk fails chunk writes of every upload at once and can corrupt
        the state database; refusing new work early keeps room for the uploads
        already under way, and the robot keeps its bag and retries later. ``needed``:
        the bytes still to come (the whole file at init). With an
        off-host blob store (S3) the bytes never land here: the floor then guards
        UPLOAD_DIR (the SQLite state, temporary files) without counting the file.
        """
        floor = self.config.min_free_disk
        root = self.blobs.local_root
        where, needed = (root, needed) if root is not None else (self.config.upload_dir, 0)
        if floor <= 0 or not where.is_dir():
            return
        free = shutil.disk_usage(where).free
        if free - needed >= floor:
            return
        log.warning(
            "Refused upload: %s (%d bytes) from %s - free disk %d bytes, floor MIN_FREE_DISK %d bytes",
            record.filename,
            needed,
            record.owner,
            free,
            floor,
        )
        msg = (
            f"the server is low on disk space ({free} bytes free, {needed} needed, "
            f"MIN_FREE_DISK keeps {floor} free); retry later"
        )
        raise InsufficientStorage(msg, details={"free_bytes": free, "needed_bytes": needed, "floor": floor})

    def _init_deduplicated(self, record: UploadRecord, duplicate: UploadRecord) -> InitResult:
        record = UploadRecord(**{**record.__dict__, **_shared_copy(duplicate)})
        self.state.create_upload(record)
        self._deduplicated(record, duplicate, when="init")
        self._emit_initialized(record, resumed=False)
        return InitResult(record, resumed=False)

    def _deduplicated(self, record: UploadRecord, duplicate: UploadRecord, *, when: str) -> None:
        """Catalogue and log an upload that now shares ``duplicate``'s stored file (verified without a finalize)."""
        catalog.record_upload(self.state, self.blobs, record, self.clock())
        log.info(
            "Deduplicated upload at %s: %s (%d bytes) - ID: %s - same content as %s",
            when,
            record.filename,
            record.filesize,
            record.upload_id,
            duplicate.upload_id,
        )

    def _emit_initialized(self, record: UploadRecord, *, resumed: bool) -> None:
        events.upload_initialized.send(
            self,
            upload_id=record.upload_id,
            owner=record.owner,
            filename=record.filename,
            filesize=record.filesize,
            chunks=record.chunks,
            resumed=resumed,
            deduplicated=record.deduplicated,
        )

    # --- chunks --------------------------------------------------------------------
    def put_chunk(
        self,
        identity: Identity,
        upload_id: str,
        index: int,
        body: BinaryIO,
        *,
        content_length: int | None,
        checksum: ChunkChecksum | None = None,
        md5: str | None = None,
    ) -> ChunkResult:
        """Store one chunk at its offset, verified while streaming and fsynced before it is acknowledged.

        ``checksum``: the declared X-Chunk-SHA256 or X-Chunk-CRC32C. Without one the receipt is the
        chunk's crc32c, which a resend of it is compared with.
        """
        record, expected = self._open_chunk(identity, upload_id, index)
        if content_length is None:
            msg = "Content-Length is required for a chunk"
            raise LengthRequired(msg, details={"expected": expected})
        if content_length != expected:
            msg = f"chunk {index} must be {expected} bytes, got {content_length}"
            raise ChunkSizeMismatch(msg, details={"expected": expected})
        started = time.monotonic()
        # Read and verify before locking: a slow robot link must not hold the chunk's lock (and a
        # retry of the same chunk from a reconnected robot must not wait for the dead request).
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buffer:
            algorithm = RECEIPT_ALGORITHM if checksum is None else checksum.algorithm
            actual, md5_hex = self._receive(
                body, expected, algorithm, want_md5=md5 is not None, write=_appender(buffer)
            )
            _check_chunk(index, actual, md5_hex, checksum=checksum, md5=md5)
            with self.blobs.chunk_lock(upload_id, index):
                stored = self._receipt(upload_id, index)
                if stored is not None:
                    return self._resent_chunk(record, index, actual, stored, buffer)
                buffer.seek(0)
                try:
                    with storage_errors():
                        self.blobs.write_chunk(upload_id, index, index * record.chunk_size, buffer, expected)
                except PartMissing as err:
                    self.part_missing(identity, record, err)
                with storage_errors():
                    received = self.state.record_chunk(upload_id, index, actual.receipt, self.clock())
        if received is None:
            self._require_state(self.get(identity, upload_id), UploadState.UPLOADING)
            msg = f"upload {upload_id} changed state while chunk {index} was stored"
            raise Conflict(msg)
        seconds = time.monotonic() - started
        log.info(
            "Received chunk %d/%d for %s (%.1f%%)",
            index + 1,
            record.chunks,
            record.filename,
            100.0 * received / record.chunks,
        )
        events.chunk_stored.send(
            self, upload_id=upload_id, owner=record.owner, index=index, bytes=expected, seconds=seconds
        )
        return ChunkResult(record, index, received, duplicate=False)

    def _open_chunk(self, identity: Identity, upload_id: str, index: int) -> tuple[UploadRecord, int]:
        """The caller's uploading upload and the exact length of its chunk ``index``."""
        record = self.get(identity, upload_id)
        self._require_state(record, UploadState.UPLOADING)
        if not record.size_known:
            msg = f"upload {upload_id} has no size yet (tus, deferred length): send its bytes with tus PATCH"
            raise Conflict(msg, details={"state": record.state.value})
        if not 0 <= index < record.chunks:
            msg = f"chunk index {index} is outside 0..{record.chunks - 1}"
            raise ChunkIndexOutOfRange(msg, details={"chunks": record.chunks})
        return record, chunk_length(record.filesize, record.chunk_size, index)

    def put_piece(
        self,
        identity: Identity,
        upload_id: str,
        index: int,
        body: BinaryIO,
        *,
        content_length: int | None,
        offset: int,
        piece_checksum: ChunkChecksum,
        chunk_checksum: ChunkChecksum,
    ) -> PieceResult:
        """Store bytes [offset, offset + length) of chunk ``index``; the piece that ends the chunk completes it.

        Pieces let a link that breaks every few seconds make progress with chunks of any size: a piece
        is acknowledged once it matched ``piece_checksum`` and was fsynced. The chunk itself is
        acknowledged (recorded as received) only when the piece ending it arrives and the whole chunk,
        read back from disk, matches ``chunk_checksum``: the server keeps no per-piece state, so pieces
        may be resent or overwritten freely until then.

        Only stores that can hold a partial chunk take pieces (local disk, not S3): the others
        answer 400 ``chunk_size_mismatch`` naming the whole chunk's length, and the client sends
        whole chunks from then on.
        """
        record, expected = self._open_chunk(identity, upload_id, index)
        if not self.blobs.supports_pieces:
            msg = (
                f"this server's {self.blobs.kind} blob store takes whole chunks only: send chunk {index} "
                f"({expected} bytes) in one request, without {HEADER_CHUNK_OFFSET}"
            )
            raise ChunkSizeMismatch(msg, details={"expected": expected})
        if content_length is None:
            msg = "Content-Length is required for a chunk piece"
            raise LengthRequired(msg, details={"expected": expected - offset})
        end = offset + content_length
        if content_length == 0 or end > expected or (end < expected and content_length < MIN_PIECE_SIZE):
            msg = (
                f"a piece of chunk {index} ({expected} bytes) at offset {offset} must be 1..{expected - offset} "
                f"bytes, and at least {MIN_PIECE_SIZE} unless it ends the chunk; got {content_length}"
            )
            raise ChunkSizeMismatch(msg, details={"expected": expected - offset})
        start = index * record.chunk_size
        started = time.monotonic()
        # Read and verify before locking, like whole chunks: a stalled link must not hold the chunk's lock.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buffer:
            actual, _ = self._receive(
                body, content_length, piece_checksum.algorithm, want_md5=False, write=_appender(buffer)
            )
            _check_digest(index, piece_checksum, actual, whole=False)
            with self.blobs.chunk_lock(upload_id, index):
                stored = self._receipt(upload_id, index)
                try:
                    if stored is not None:
                        return self._resent_piece(record, index, offset, content_length, stored, actual, chunk_checksum)
                    buffer.seek(0)
                    with storage_errors():
                        # fsync before ack: an acknowledged piece must survive a crash or power loss.
                        self.blobs.write_piece(upload_id, start + offset, buffer, content_length)
                    if end < expected:
                        received = len(self.state.received_chunks(upload_id))
                        return PieceResult(
                            record, index, offset, content_length, received, complete=False, duplicate=False
                        )
                    on_disk = self.stored_checksum(upload_id, start, expected, chunk_checksum.algorithm)
                except PartMissing as err:
                    self.part_missing(identity, record, err)
                _check_digest(index, chunk_checksum, on_disk, whole=True)
                with storage_errors():
                    received = self.state.record_chunk(upload_id, index, on_disk.receipt, self.clock())
        if received is None:
            self._require_state(self.get(identity, upload_id), UploadState.UPLOADING)
            msg = f"upload {upload_id} changed state while chunk {index} was stored"
            raise Conflict(msg)
        log.info(
            "Received chunk %d/%d for %s (%.1f%%, last piece at offset %d)",
            index + 1,
            record.chunks,
            record.filename,
            100.0 * received / record.chunks,
            offset,
        )
        events.chunk_stored.send(
            self,
            upload_id=upload_id,
            owner=record.owner,
            index=index,
            bytes=expected,
            seconds=time.monotonic() - started,
        )
        return PieceResult(record, index, offset, content_length, received, complete=True, duplicate=False)

    def _resent_piece(
        self,
        record: UploadRecord,
        index: int,
        offset: int,
        length: int,
        stored: ChunkChecksum,
        piece: ChunkChecksum,
        chunk_checksum: ChunkChecksum,
    ) -> PieceResult:
        """A verified piece of an acknowledged chunk (its reply was lost): a no-op if the bytes are the stored ones."""
        chunk_start = index * record.chunk_size
        if stored.algorithm is not chunk_checksum.algorithm:
            # Acknowledged under the other checksum: what is stored stands for the receipt, so hash it the declared way.
            expected = chunk_length(record.filesize, record.chunk_size, index)
            stored = self.stored_checksum(record.upload_id, chunk_start, expected, chunk_checksum.algorithm)
        on_disk = self.stored_checksum(record.upload_id, chunk_start + offset, length, piece.algorithm)
        if not (stored.matches(chunk_checksum) and on_disk.matches(piece)):
            msg = f"chunk {index} was already stored with different content; re-initialize if the file changed"
            raise Conflict(msg)
        received = len(self.state.received_chunks(record.upload_id))
        return PieceResult(record, index, offset, length, received, complete=True, duplicate=True)

    def _receipt(self, upload_id: str, index: int) -> ChunkChecksum | None:
        receipt = self.state.chunk_receipt(upload_id, index)
        return None if receipt is None else ChunkChecksum.from_receipt(receipt)

    def stored_checksum(self, upload_id: str, offset: int, length: int, algorithm: ChunkAlgorithm) -> ChunkChecksum:
        """The checksum of bytes as they are stored: the check that every piece of a chunk arrived and stayed intact."""
        return ChunkChecksum.of(algorithm, self.blobs.read_part(upload_id, offset, length))

    def part_missing(self, identity: Identity, record: UploadRecord, err: PartMissing) -> NoReturn:
        """The part is gone: aborted or swept since we looked (409/410), or lost (410 part_missing, start over).

        A lost part cannot be rebuilt from receipts, so the upload ends aborted with PART_MISSING
        and the client, which still holds the file, starts a new upload.
        """
        self._require_state(self.get(identity, record.upload_id), UploadState.UPLOADING)
        lost = self.state.transition(
            record.upload_id,
            (UploadState.UPLOADING,),
            self.clock(),
            state=UploadState.ABORTED,
            error_code=ErrorCode.PART_MISSING.value,
            error_message=str(err),
        )
        if lost is not None:
            self.blobs.remove_part(record.upload_id)
            log.error("Lost upload data: %s - ID: %s - %s", record.filename, record.upload_id, err)
            events.upload_failed.send(
                self,
                upload_id=record.upload_id,
                owner=record.owner,
                code=ErrorCode.PART_MISSING.value,
                message=str(err),
            )
        self.get(identity, record.upload_id)  # raises the 409/410 that now applies
        raise Conflict(str(err))  # unreachable unless the state changed again meanwhile

    def _resent_chunk(
        self, record: UploadRecord, index: int, actual: ChunkChecksum, stored: ChunkChecksum, body: IO[bytes]
    ) -> ChunkResult:
        """A chunk already acknowledged is never overwritten: same bytes are a no-op, different bytes a conflict."""
        if actual.algorithm is not stored.algorithm:
            body.seek(0)
            actual = ChunkChecksum.of(stored.algorithm, iter(lambda: body.read(BODY_READ_SIZE), b""))
        if not actual.matches(stored):
            msg = f"chunk {index} was already stored with different content; re-initialize if the file changed"
            raise Conflict(msg)
        received = len(self.state.received_chunks(record.upload_id))
        return ChunkResult(record, index, received, duplicate=True)

    @staticmethod
    def _receive(
        body: BinaryIO,
        length: int,
        algorithm: ChunkAlgorithm,
        *,
        want_md5: bool,
        write: Callable[[bytes, int], None] | None = None,
        offset: int = 0,
    ) -> tuple[ChunkChecksum, str | None]:
        """Read exactly ``length`` bytes in BODY_READ_SIZE pieces, hashing (and writing) each; (checksum, md5 hex)."""
        checksum = chunk_hasher(algorithm)
        md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        remaining = length
        while remaining:
            piece = body.read(min(BODY_READ_SIZE, remaining))
            if not piece:
                msg = f"chunk body ended {remaining} bytes early"
                raise ChunkSizeMismatch(msg, details={"expected": length})
            checksum.update(piece)
            if md5 is not None:
                md5.update(piece)
            if write is not None:
                write(piece, offset)
            offset += len(piece)
            remaining -= len(piece)
        return ChunkChecksum(algorithm, checksum.hexdigest()), (md5.hexdigest() if md5 else None)

    # --- status, listing ----------------------------------------------------------------
    def status(self, identity: Identity, upload_id: str) -> dict[str, Any]:
        """The status document, from one read of the state store (a polled route)."""
        record, receipts = self.state.get_upload_with_receipts(upload_id) if is_valid_id(upload_id) else (None, {})
        return self.describe(self._accessible(identity, upload_id, record), receipts=receipts)

    def describe(
        self, record: UploadRecord, *, detailed: bool = True, receipts: dict[int, str] | None = None
    ) -> dict[str, Any]:
        """The JSON status document: everything a client needs to resume, and to decide deletion safely.

        ``receipts``: the upload's chunk receipts when the caller read them already.
        """
        if record.state is UploadState.COMPLETE:
            received = list(range(record.chunks))
        else:
            received = sorted(self.state.received_chunks(record.upload_id) if receipts is None else receipts)
        known = record.size_known  # else filesize is only MAX_FILE_SIZE, a bound: shown as null
        document: dict[str, Any] = {
            "upload_id": record.upload_id,
            "state": record.state.value,
            "filename": record.filename,
            "filesize": record.filesize if known else None,
            "chunk_size": record.chunk_size,
            "chunks": record.chunks if known else None,
            "received_count": len(received),
            "bytes_received": sum(chunk_length(record.filesize, record.chunk_size, i) for i in received),
            "md5": record.md5,
            "sha256": record.sha256,
            "verified": record.verified,
            "compression": record.compression.value,
            "codec": record.codec.value if record.codec else None,
            "stored_size": record.stored_size,
            "compression_ratio": compression_ratio(record),
            "deduplicated": record.deduplicated,
            "progress": finalize_progress(record),
            "error": {"code": record.error_code, "message": record.error_message} if record.error_code else None,
            "created_at": isoformat(record.created_at),
            "updated_at": isoformat(record.updated_at),
            "owner": record.owner,
            "metadata": record.metadata,
        }
        if detailed:
            have = set(received)
            document["received"] = received
            document["missing"] = [i for i in range(record.chunks) if i not in have]
        return document

    def list_uploads(
        self, identity: Identity, *, state: UploadState | None, client: str | None, limit: int, offset: int
    ) -> dict[str, Any]:
        if not identity.admin and client not in (None, identity.name):
            return {"uploads": [], "total": 0, "limit": limit, "offset": offset}
        owner = client if identity.admin else identity.name
        records, total = self.state.list_uploads(UploadQuery(owner=owner, state=state, limit=limit, offset=offset))
        uploads = [self.describe(r, detailed=False) for r in records]
        return {"uploads": uploads, "total": total, "limit": limit, "offset": offset}

    # --- finalize, abort ------------------------------------------------------------------
    def finalize(self, identity: Identity, upload_id: str, *, sha256: str | None = None) -> tuple[dict[str, Any], bool]:
        """Queue verification and storage; (status, accepted) — accepted is False when already complete.

        ``sha256`` is the whole-file digest of a client that hashed while sending (it declared none at
        init): it is recorded with the move to finalizing, so the job verifies against it. One that
        contradicts the digest already recorded is refused, whatever the state.
        """
        record = self.get(identity, upload_id)
        if sha256 is not None and record.sha256 is not None and not hex_digests_equal(sha256, record.sha256):
            msg = f"finalize declares sha256 {sha256}, upload {upload_id} has {record.sha256}"
            raise ChecksumConflict(msg)
        if record.state in (UploadState.FINALIZING, UploadState.COMPLETE):
            return self.describe(record), record.state is UploadState.FINALIZING
        self._require_state(record, UploadState.UPLOADING)
        if not record.size_known:
            msg = f"upload {upload_id} has no size yet: send Upload-Length in a tus PATCH first"
            raise UploadIncomplete(msg, details={"missing": []})
        linked = self._finalize_deduplicated(identity, record, sha256 or record.sha256)
        if linked is not None:
            return self.describe(linked), False
        received = self.state.received_chunks(upload_id)
        if len(received) < record.chunks:
            missing = [i for i in range(record.chunks) if i not in received]
            msg = f"{len(missing)} of {record.chunks} chunks are missing"
            raise UploadIncomplete(msg, details={"missing": missing})
        queued = self.state.start_finalize(upload_id, self.clock(), sha256=sha256 if record.sha256 is None else None)
        if queued is None:  # another worker finalized or aborted it in between
            return self.finalize(identity, upload_id, sha256=sha256)
        log.info("Finalizing upload: %s (%d bytes) - ID: %s", record.filename, record.filesize, upload_id)
        self.on_job_queued()
        return self.describe(queued), True

    def _finalize_deduplicated(
        self, identity: Identity, record: UploadRecord, sha256: str | None
    ) -> UploadRecord | None:
        """Complete ``record`` as a copy of an intact verified upload with the declared ``sha256``, if there is one.

        Whatever chunks arrived are dropped unread: the shared stored file was checked end to end
        against this sha256 when it was stored, which is what init's deduplication relies on too.
        Owner-scoped like init's; None when there is no such copy (or the upload moved on meanwhile).
        """
        if sha256 is None:
            return None
        probe = UploadRecord(**{**record.__dict__, "md5": None, "sha256": sha256})
        duplicate = self._intact_duplicate(probe, owner=None if identity.admin else record.owner)
        if duplicate is None:
            return None
        linked = self.state.transition(
            record.upload_id, (UploadState.UPLOADING,), self.clock(), **_shared_copy(duplicate)
        )
        if linked is None:
            return None
        with storage_errors():
            self.blobs.remove_part(record.upload_id)
        self._deduplicated(linked, duplicate, when="finalize")
        events.send_upload_completed(self, linked, seconds=0.0)
        return linked

    def abort(self, identity: Identity, upload_id: str) -> dict[str, Any]:
        record = self.get(identity, upload_id)
        if record.state is UploadState.ABORTED:
            return self.describe(record)
        if record.state is UploadState.COMPLETE:
            msg = f"upload {upload_id} is complete; a stored file is not removed by abort"
            raise Conflict(msg, details={"state": record.state.value})
        aborted = self.state.transition(
            upload_id,
            (UploadState.UPLOADING, UploadState.FINALIZING, UploadState.FAILED),
            self.clock(),
            state=UploadState.ABORTED,
            error_code=None,
            error_message=None,
        )
        if aborted is None:
            return self.abort(identity, upload_id)
        self.blobs.remove_part(upload_id)
        log.info("Aborted upload: %s - ID: %s", record.filename, upload_id)
        events.upload_aborted.send(self, upload_id=upload_id, owner=record.owner)
        return self.describe(aborted)

    # --- download --------------------------------------------------------------------------
    def download(self, identity: Identity, upload_id: str, *, raw: bool) -> Download:
        record = self.get(identity, upload_id)
        self._require_state(record, UploadState.COMPLETE)
        assert record.blob_id is not None  # noqa: S101 - complete uploads always reference a blob
        if self.blobs.stored_size(record.blob_id, record.codec or Codec.NONE) is None:
            msg = f"the stored file of upload {upload_id} is missing"
            raise NotFound(msg)
        return Download(record, self.blobs, raw=raw)

    # --- delete (admin), retention ---------------------------------------------------------------
    def delete_stored(self, identity: Identity, upload_id: str, *, reason: str = "admin") -> Deletion:
        """Delete a complete upload's stored file (admins only); its record stays, as ``aborted``/``upload_deleted``.

        The record is kept so the robot, the dashboard and the audit log can
        still say what happened to the upload. A file that another complete
        upload shares (deduplication) is kept until the last one is deleted.
        """
        if not identity.admin:
            msg = "deleting a stored upload needs an admin key"
            raise Forbidden(msg)
        record = self.get(identity, upload_id)
        self._require_state(record, UploadState.COMPLETE)
        deleted = self.state.transition(
            upload_id,
            (UploadState.COMPLETE,),
            self.clock(),
            state=UploadState.ABORTED,
            error_code=ErrorCode.UPLOAD_DELETED.value,
            error_message=f"stored file deleted ({reason}: {identity.name})",
        )
        if deleted is None:  # deleted (or changed) by someone else in between
            return self.delete_stored(identity, upload_id, reason=reason)
        sharing = self.blob_sharer(record)
        freed = 0
        if sharing is None and record.blob_id is not None:
            with storage_errors():
                self.blobs.delete(record.blob_id)
            freed = record.stored_size or 0
        log.warning(
            "Deleted upload: %s (%d bytes, %d bytes freed) - ID: %s - owner %s - by %s (%s)%s",
            record.filename,
            record.filesize,
            freed,
            upload_id,
            record.owner,
            identity.name,
            reason,
            f" - stored file kept, shared with {sharing.upload_id}" if sharing else "",
        )
        events.upload_deleted.send(self, upload_id=upload_id, owner=record.owner, by=identity.name, bytes_freed=freed)
        return Deletion(deleted, freed, sharing.upload_id if sharing else None)

    def blob_sharer(self, record: UploadRecord) -> UploadRecord | None:
        """Another complete upload that still refers to ``record``'s stored file (deduplication), if any.

        A stored file is deleted only when this is None: deleting it under a sharer would lose a verified copy.
        """
        others = self.state.find_duplicates(
            filesize=record.filesize, md5=record.md5, sha256=record.sha256, owner=None, limit=100
        )
        return next((other for other in others if other.blob_id == record.blob_id), None)

    def apply_retention(self) -> int:
        """Delete stored uploads that began more than RETENTION_DAYS ago (0: never); the number deleted."""
        if self.config.retention_days <= 0:
            return 0
        cutoff = self.clock() - self.config.retention_days * 86400
        deleted = 0
        while True:
            # The listing is newest first: its last page holds the oldest uploads.
            _, total = self.state.list_uploads(UploadQuery(state=UploadState.COMPLETE, limit=1))
            page, _ = self.state.list_uploads(
                UploadQuery(state=UploadState.COMPLETE, limit=RETENTION_BATCH, offset=max(0, total - RETENTION_BATCH))
            )
            old = [r for r in page if r.created_at < cutoff]
            for record in old:
                with contextlib.suppress(Conflict, NotFound):  # deleted by another process meanwhile
                    self.delete_stored(RETENTION_IDENTITY, record.upload_id, reason="retention")
                    deleted += 1
            if len(old) < len(page) or not old:
                break
        log.log(
            logging.INFO if deleted else logging.DEBUG,
            "Retention: %d stored upload(s) older than %.1f days deleted",
            deleted,
            self.config.retention_days,
        )
        return deleted

    # --- sweep --------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Expire uploads idle longer than UPLOAD_TTL: their part files go, later requests get 410."""
        now = self.clock()
        expired = 0
        while stale := self.state.stale_uploads(now - self.config.upload_ttl):
            for record in stale:
                received = self.state.received_chunks(record.upload_id)
                # idle_before in the same statement: a chunk acknowledged since the listing keeps it alive.
                changed = self.state.transition(
                    record.upload_id,
                    (UploadState.UPLOADING,),
                    now,
                    idle_before=now - self.config.upload_ttl,
                    state=UploadState.ABORTED,
                    error_code=ErrorCode.UPLOAD_EXPIRED.value,
                    error_message=f"no activity for {self.config.upload_ttl:.0f}s",
                )
                if changed is None:
                    continue
                self.blobs.remove_part(record.upload_id)
                expired += 1
                nbytes = sum(chunk_length(record.filesize, record.chunk_size, i) for i in received)
                log.info(
                    "Expired upload: %s - ID: %s - %d of %d chunks had arrived",
                    record.filename,
                    record.upload_id,
                    len(received),
                    record.chunks,
                )
                events.upload_expired.send(self, upload_id=record.upload_id, owner=record.owner, bytes_received=nbytes)
        orphans = self._sweep_orphans()
        receipts = self.state.prune_chunk_receipts()
        pruned = sum(prune(now - self.config.state_retention) for prune in self.pruners)
        log.log(
            logging.INFO if expired or orphans or receipts or pruned else logging.DEBUG,
            "Sweep finished: %d expired upload(s), %d orphaned file(s) removed, %d chunk receipt(s) and"
            " %d old command/robot/joined tus partial upload row(s) pruned",
            expired,
            orphans,
            receipts,
            pruned,
        )
        self.apply_retention()
        return expired

    def _sweep_orphans(self) -> int:
        """Remove files a crash left between two steps: nothing else would ever delete them.

        A part file whose upload is finished (the crash came between the final transition and
        removing the part) or that has no record at all (init crashed between the part and the
        record; only once it is older than UPLOAD_TTL, so an init in progress keeps its part), and
        staging files of finalize attempts that died (older than two leases: a live attempt writes on).
        """
        # Store timestamps are wall-clock time (file mtimes, S3 LastModified): age them by the wall clock.
        ages = self.blobs.part_ages(self.wall_clock())
        states = self.state.states_of(list(ages))
        removed = 0
        for upload_id, age in ages.items():
            state = states.get(upload_id)
            finished = state in (UploadState.COMPLETE, UploadState.ABORTED, UploadState.FAILED)
            if finished or (state is None and age > self.config.upload_ttl):
                self.blobs.remove_part(upload_id)
                log.info(
                    "Removed orphaned part data of upload %s (%s)", upload_id, state.value if state else "no record"
                )
                removed += 1
        return removed + self.blobs.remove_stale_staging(max(60.0, 2 * self.config.job_lease))


def _shared_copy(duplicate: UploadRecord) -> dict[str, Any]:
    """The fields that make an upload a complete, verified copy sharing ``duplicate``'s stored file."""
    return {
        "state": UploadState.COMPLETE,
        "md5": duplicate.md5,
        "sha256": duplicate.sha256,
        "blob_id": duplicate.blob_id,
        "codec": duplicate.codec,
        "stored_size": duplicate.stored_size,
        "verified": True,
        "deduplicated": True,
        "progress": duplicate.filesize,
    }


def _check_digest(index: int, claimed: ChunkChecksum, actual: ChunkChecksum, *, whole: bool) -> None:
    if not claimed.matches(actual):
        what, header = ("the whole chunk as stored", claimed.header) if whole else ("the piece", claimed.piece_header)
        msg = f"chunk {index}: {what} does not match its {header}; it was not acknowledged"
        raise ChecksumMismatch(msg, details={"header": header})


def _appender(buffer: IO[bytes]) -> Callable[[bytes, int], None]:
    def write(piece: bytes, _offset: int) -> None:
        buffer.write(piece)

    return write


def _check_chunk(
    index: int, actual: ChunkChecksum, md5_hex: str | None, *, checksum: ChunkChecksum | None, md5: str | None
) -> None:
    mismatched = None
    if checksum is not None and not checksum.matches(actual):
        mismatched = checksum.header
    elif md5 is not None and (md5_hex is None or not hex_digests_equal(md5, md5_hex)):
        mismatched = HEADER_CONTENT_MD5
    if mismatched is not None:
        msg = f"chunk {index} does not match its {mismatched}; it was not stored"
        raise ChecksumMismatch(msg, details={"header": mismatched})
