"""tus operations over the native ``UploadService``: a tus upload *is* a native upload, seen through an offset.

Creation makes a native upload (same validation, deduplication, limits and owner) plus a
``tus_uploads`` row. A PATCH body is cut at the native chunk boundaries; each piece is read
before any lock is taken (a dead connection must not block its own resume), written at its
offset and fsynced, and only then acknowledged by advancing the offset in the same transaction
as the chunk receipt. When the offset reaches the length, the normal finalize job takes over
(verification, compression, deduplication, catalogue).

Stores that cannot hold a partial chunk (S3) keep only whole chunks: a PATCH that ends inside
a chunk is acknowledged up to the last chunk boundary, and the client resends the rest from the
offset it is told.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from werkzeug.exceptions import ClientDisconnected

from core.checksums import ChunkChecksum, chunk_hasher
from core.protocol import ErrorCode, UploadState, chunk_count, chunk_length
from core.server import events
from core.server.blobs import PartMissing
from core.server.errors import (
    ApiError,
    ChunkSizeMismatch,
    Conflict,
    FileTooLarge,
    Forbidden,
    InvalidField,
    NotFound,
    PayloadTooLarge,
)
from core.server.identity import Identity
from core.server.service import BODY_READ_SIZE, RECEIPT_ALGORITHM, SPOOL_IN_MEMORY, UploadService, storage_errors
from core.server.state_store import SIZE_UNKNOWN, UploadRecord
from core.server.tus.hashing import RunningHash, StreamHashes
from core.server.tus.headers import Checksum, Concat, TusChecksumMismatch
from core.server.tus.protocol import (
    CONCAT_FINAL,
    CONCAT_PARTIAL,
    HEADER_UPLOAD_CONCAT,
    HEADER_UPLOAD_OFFSET,
    META_COMPRESSION,
    META_FILENAME,
    META_MD5,
    META_METADATA,
    META_NAME,
    META_SHA256,
)
from core.server.tus.store import TusRecord, TusStore
from core.server.validation import parse_init

log = logging.getLogger("upload_server")

DEFAULT_FILENAME = "tus-upload"
RESERVED_KEYS = frozenset({META_FILENAME, META_NAME, META_SHA256, META_MD5, META_COMPRESSION, META_METADATA})


class UploadGone(ApiError):
    """410: the upload was terminated (or its data lost); it takes nothing more."""

    code = 410
    error_code = ErrorCode.UPLOAD_ABORTED


@dataclass(frozen=True)
class TusUpload:
    """A tus upload as HEAD describes it: its native record and its tus row."""

    record: UploadRecord
    tus: TusRecord

    @property
    def length(self) -> int | None:
        """Upload-Length; None while deferred (Upload-Defer-Length: 1, the length comes in a later PATCH)."""
        return self.tus.upload_length if self.record.size_known else None

    @property
    def complete(self) -> bool:
        return self.length is not None and self.tus.upload_offset == self.length


def init_body(length: int, meta: dict[str, str]) -> dict[str, Any]:
    """The native init body that Upload-Length and Upload-Metadata stand for (validated by ``parse_init``)."""
    extra: dict[str, Any] = {}
    if META_METADATA in meta:
        try:
            extra = json.loads(meta[META_METADATA])
        except ValueError as err:
            msg = f"Upload-Metadata '{META_METADATA}' must be a JSON object"
            raise InvalidField(msg, details={"field": META_METADATA}) from err
        if not isinstance(extra, dict):
            msg = f"Upload-Metadata '{META_METADATA}' must be a JSON object"
            raise InvalidField(msg, details={"field": META_METADATA})
    others = {key: value for key, value in meta.items() if key not in RESERVED_KEYS}
    compression: Any = meta.get(META_COMPRESSION)
    if compression is not None and compression.lower() in {"true", "false"}:
        compression = compression.lower() == "true"
    return {
        "filename": meta.get(META_FILENAME) or meta.get(META_NAME) or DEFAULT_FILENAME,
        "filesize": length,
        "sha256": meta.get(META_SHA256),
        "checksum": meta.get(META_MD5),
        "compression": compression,
        "metadata": {**others, **extra},
    }


class _PartReader:
    """A ``read(n)`` view of a stored part, so a partial upload can be copied like a PATCH body."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._left = b""

    def read(self, size: int) -> bytes:
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._left = piece
        data, self._left = self._left[:size], self._left[size:]
        return data


class TusService:
    def __init__(self, uploads: UploadService, store: TusStore, hashes: StreamHashes | None = None) -> None:
        self.uploads = uploads
        self.store = store
        self.hashes = hashes or StreamHashes()

    @property
    def concatenation(self) -> bool:
        """Partial uploads are read back to be concatenated: only stores that can read a part (local disk)."""
        return self.uploads.blobs.supports_pieces

    # --- lookups ---------------------------------------------------------------------
    def get(self, identity: Identity, upload_id: str) -> TusUpload:
        """The caller's tus upload: 404 for unknown, foreign and native-only ids; 410 once terminated or swept."""
        record = self.uploads.get(identity, upload_id)  # 404, or 410 when expired or lost
        tus = self.store.get(upload_id)
        if tus is None:
            msg = f"upload {upload_id} not found"
            raise NotFound(msg)
        if record.state is UploadState.ABORTED:
            msg = f"upload {upload_id} was terminated"
            raise UploadGone(msg, details={"state": record.state.value})
        return TusUpload(record, tus)

    def expires_at(self, upload: TusUpload) -> float | None:
        """When the TTL sweep may expire the upload (idle for UPLOAD_TTL); None once it no longer can."""
        if upload.record.state is not UploadState.UPLOADING:
            return None
        return upload.record.updated_at + self.uploads.config.upload_ttl

    # --- creation ----------------------------------------------------------------------
    def create(
        self, identity: Identity, length: int | None, meta: dict[str, str], raw_meta: str, concat: Concat | None
    ) -> TusUpload:
        if concat is not None and not self.concatenation:
            msg = f"{HEADER_UPLOAD_CONCAT} needs a blob store that can read partial uploads back (local disk)"
            raise InvalidField(msg, details={"field": HEADER_UPLOAD_CONCAT})
        if concat is not None and concat.kind == CONCAT_FINAL:
            return self._create_final(identity, concat.parts, meta, raw_meta)
        record = self._create_native(identity, length, meta)
        done = record.state is not UploadState.UPLOADING  # deduplicated: already complete
        tus = self._create_row(record, raw_meta, concat.kind if concat else None)
        log.info(
            "tus upload created: %s (%s bytes%s) - ID: %s",
            record.filename,
            "deferred" if length is None else length,
            ", partial" if concat else ", deduplicated" if done else "",
            record.upload_id,
        )
        return TusUpload(record, tus)

    def _create_row(
        self, record: UploadRecord, raw_meta: str, concat: str | None, parts: tuple[str, ...] = ()
    ) -> TusRecord:
        """The tus row of a new native upload; a deduplicated one is complete, its offset its length."""
        done = record.state is not UploadState.UPLOADING
        tus = TusRecord(
            upload_id=record.upload_id,
            upload_length=record.filesize,
            upload_offset=record.filesize if done else 0,
            concat=concat,
            parts=parts,
            raw_metadata=raw_meta,
        )
        self.store.create(tus)
        return tus

    def _create_native(self, identity: Identity, length: int | None, meta: dict[str, str]) -> UploadRecord:
        """The native upload; of a deferred length (None): MAX_FILE_SIZE as a bound and ``SIZE_UNKNOWN`` chunks."""
        bound = self.uploads.config.max_file_size if length is None else length
        spec = parse_init(init_body(bound, meta), self.uploads.config)
        if length is None:
            spec = dataclasses.replace(spec, chunks=SIZE_UNKNOWN)
        return self.uploads.init_upload(identity, spec, resume=False).record

    def _declare_length(self, identity: Identity, upload: TusUpload, length: int) -> TusUpload:
        """Upload-Length in a PATCH: once for a deferred upload (repeating the same value is harmless)."""
        known, offset = upload.length, upload.tus.upload_offset
        if known is not None:
            if known != length:
                msg = f"Upload-Length {length} does not match the upload's length {known}"
                raise InvalidField(msg, details={"field": "Upload-Length", "length": known})
            return upload
        limit = self.uploads.config.max_file_size
        if length > limit:
            msg = f"Upload-Length {length} exceeds the maximum of {limit} bytes"
            raise FileTooLarge(msg, details={"max": limit})
        if length < offset:
            msg = f"Upload-Length {length} is below the {offset} bytes already received"
            raise InvalidField(msg, details={"field": "Upload-Length", "offset": offset})
        record = upload.record
        self.uploads.require_free_disk(record, length - offset)
        with storage_errors():
            declared = self.store.declare_length(
                record.upload_id, length, chunk_count(length, record.chunk_size), self.uploads.clock()
            )
        current = self.get(identity, record.upload_id)
        if not declared and current.length != length:
            msg = f"upload {record.upload_id} changed while its length was declared"
            raise Conflict(msg, details={"offset": current.tus.upload_offset, "length": current.length})
        log.info("tus length declared: %s (%d bytes) - ID: %s", record.filename, length, record.upload_id)
        return current

    def _create_final(
        self, identity: Identity, part_ids: tuple[str, ...], meta: dict[str, str], raw_meta: str
    ) -> TusUpload:
        """Concatenate complete partial uploads into a new upload: their bytes are copied in order, then finalized.

        The copy hashes as it goes, so finalize does not read the result again; the partial uploads
        are terminated once the final upload holds their bytes, and marked joined: they are parts
        of the final upload, not failures, so listings and the dashboard leave them out.
        """
        parts = [self.get(identity, part_id) for part_id in part_ids]
        for part in parts:
            if part.tus.concat != CONCAT_PARTIAL or not part.complete:
                msg = f"upload {part.record.upload_id} is not a complete partial upload"
                raise Conflict(msg, details={"field": HEADER_UPLOAD_CONCAT})
        length = sum(part.tus.upload_length for part in parts)
        record = self._create_native(identity, length, meta)
        self._create_row(record, raw_meta, CONCAT_FINAL, part_ids)
        if record.state is UploadState.UPLOADING:  # else deduplicated: already complete
            offset = 0
            for part in parts:
                size = part.tus.upload_length
                try:
                    with storage_errors():
                        reader = _PartReader(self.uploads.blobs.read_part(part.record.upload_id, 0, size))
                        offset = self._store_body(identity, record, offset, reader, size)
                except PartMissing as err:
                    self.uploads.part_missing(identity, part.record, err)
            self._complete(identity, record, partial=False)
        for part in parts:
            self.uploads.abort(identity, part.record.upload_id)
        self.store.mark_joined(part_ids)
        log.info(
            "tus upload concatenated: %s (%d bytes from %d partial uploads) - ID: %s",
            record.filename,
            length,
            len(parts),
            record.upload_id,
        )
        return self.get(identity, record.upload_id)

    # --- PATCH ----------------------------------------------------------------------------
    def patch(
        self,
        identity: Identity,
        upload_id: str,
        body: BinaryIO,
        *,
        offset: int,
        content_length: int | None,
        checksum: Checksum | None,
        declared_length: int | None = None,
    ) -> TusUpload:
        """Store a PATCH body at ``offset``; ``content_length`` None: a chunked body, read until it ends.

        A chunked body is read up to the upload's length and no further (MAX_FILE_SIZE while the
        length is deferred). ``declared_length``: the PATCH's Upload-Length, set before the body
        is stored, so the body may end the upload (on S3: carry its short tail chunk).
        """
        upload = self.get(identity, upload_id)
        if upload.tus.concat == CONCAT_FINAL:
            msg = "a final (concatenated) upload takes no PATCH"
            raise Forbidden(msg)
        if offset != upload.tus.upload_offset:
            msg = f"{HEADER_UPLOAD_OFFSET} {offset} does not match the upload's offset {upload.tus.upload_offset}"
            raise Conflict(msg, details={"offset": upload.tus.upload_offset})
        if declared_length is not None:
            upload = self._declare_length(identity, upload, declared_length)
        record, tus = upload.record, upload.tus
        length = tus.upload_length - offset if content_length is None else content_length
        if offset + length > tus.upload_length:
            msg = f"{length} bytes at offset {offset} exceed the upload's length {tus.upload_length}"
            raise PayloadTooLarge(msg, details={"length": tus.upload_length})
        if length == 0:
            if declared_length is not None and upload.complete and record.state is UploadState.UPLOADING:
                self._complete(identity, record, partial=tus.concat == CONCAT_PARTIAL)  # the length ends it here
                return self.get(identity, upload_id)
            return upload
        if record.state is not UploadState.UPLOADING:
            msg = f"upload {upload_id} is {record.state.value}"
            raise Conflict(msg, details={"state": record.state.value})
        if checksum is None:
            new_offset = self._store_body(identity, record, offset, body, length)
        else:
            exact = content_length is not None
            new_offset = self._store_checked(identity, record, offset, body, length, checksum, exact=exact)
        log.info(
            "tus PATCH: %s - ID: %s - offset %d -> %d of %s",
            record.filename,
            upload_id,
            offset,
            new_offset,
            upload.length,
        )
        if upload.length is not None and new_offset == upload.length:
            self._complete(identity, record, partial=tus.concat == CONCAT_PARTIAL)
        return self.get(identity, upload_id)

    def _store_checked(
        self,
        identity: Identity,
        record: UploadRecord,
        offset: int,
        body: BinaryIO,
        length: int,
        checksum: Checksum,
        *,
        exact: bool,
    ) -> int:
        """Spool and check the whole body first: a body that does not match its checksum stores nothing (460).

        ``exact``: the body must be ``length`` bytes (Content-Length); else (chunked) at most ``length``.
        """
        digest = hashlib.new(checksum.algorithm)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buffer:
            received = _copy(body, buffer, length, digest)
            if not exact and _copy(body, io.BytesIO(), 1):
                msg = f"the body is longer than the {length} bytes left of the upload; nothing was stored"
                raise PayloadTooLarge(msg, details={"length": record.filesize})
            if exact and received < length:
                msg = f"the body ended after {received} of {length} bytes; nothing was stored"
                raise InvalidField(msg, details={"offset": offset})
            if not hmac.compare_digest(digest.digest(), checksum.digest):
                msg = f"the body does not match its Upload-Checksum ({checksum.algorithm}); nothing was stored"
                raise TusChecksumMismatch(msg, details={"offset": offset})
            buffer.seek(0)
            return self._store_body(identity, record, offset, buffer, received)

    def _store_body(self, identity: Identity, record: UploadRecord, offset: int, body: Any, length: int) -> int:
        """Store up to ``length`` bytes of ``body`` from ``offset``, one native chunk (or piece) at a time."""
        position, end = offset, offset + length
        self._require_progress(record, offset, end)
        running = self._running_hash(record.upload_id, offset)
        while position < end:
            stored = self._store_segment(identity, record, position, body, end, running)
            if stored == 0:
                break
            position += stored
        return position

    def _running_hash(self, upload_id: str, offset: int) -> RunningHash | None:
        """The in-order sha256 of bytes [0, offset), continued from the tus row's exported state (or this process).

        None (finalize will re-read) when no valid state exists at exactly this offset, and always
        on stores without a lock across hosts (S3): two hosts could store different bytes of one
        chunk at once, and the hash of what one of them received would not stand for what is stored.
        """
        if not self.uploads.blobs.exclusive_chunk_lock:
            return None
        tus = self.store.get(upload_id) if offset else None
        stored = tus.hash_state if tus is not None and tus.upload_offset == offset else None
        return self.hashes.resume(upload_id, offset, stored)

    def _require_progress(self, record: UploadRecord, offset: int, end: int) -> None:
        """400 for a body that cannot move the offset at all: on S3 it ends inside the chunk it starts."""
        if self.uploads.blobs.supports_pieces:
            return
        index = offset // record.chunk_size
        chunk_end = index * record.chunk_size + chunk_length(record.filesize, record.chunk_size, index)
        if end < chunk_end:
            msg = (
                f"this server's {self.uploads.blobs.kind} store keeps whole chunks of {record.chunk_size} bytes: "
                f"send PATCH bodies that end on a multiple of {record.chunk_size} bytes or at the upload's end"
            )
            raise ChunkSizeMismatch(msg, details={"chunk_size": record.chunk_size, "offset": offset})

    def _store_segment(
        self, identity: Identity, record: UploadRecord, position: int, body: Any, end: int, running: RunningHash | None
    ) -> int:
        """Store bytes from ``position`` up to the next chunk boundary (or ``end``); how many were acknowledged.

        ``running`` (the sha256 of bytes [0, position), if known) takes in the bytes as they are
        copied, and its state is stored with the new offset, in the same transaction.
        """
        blobs, upload_id = self.uploads.blobs, record.upload_id
        index = position // record.chunk_size
        chunk_start = index * record.chunk_size
        chunk_end = chunk_start + chunk_length(record.filesize, record.chunk_size, index)
        wanted = min(end, chunk_end) - position
        whole = position == chunk_start and position + wanted == chunk_end
        if not (whole or blobs.supports_pieces):
            return 0  # S3 keeps whole chunks only: the client resends from the offset we answer
        started = time.monotonic()
        segment = chunk_hasher(RECEIPT_ALGORITHM)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as buffer:
            got = _copy(body, buffer, wanted, segment, running)
            if got == 0 or (got < wanted and not blobs.supports_pieces):
                return 0
            new_offset = position + got
            buffer.seek(0)
            segment_receipt = ChunkChecksum(RECEIPT_ALGORITHM, segment.hexdigest()) if whole and got == wanted else None
            with blobs.chunk_lock(upload_id, index):
                receipt = self._write_segment(identity, record, position, buffer, got, segment_receipt)
                complete = running is not None and new_offset == record.filesize
                with storage_errors():
                    advanced = self.store.advance(
                        upload_id,
                        position,
                        new_offset,
                        self.uploads.clock(),
                        chunk=receipt,
                        received_sha256=running.hexdigest() if complete else None,
                        hash_state=None if complete else self.hashes.exported(running),
                    )
                if not advanced:
                    self.uploads.get(identity, upload_id)  # 410 if expired meanwhile
                    msg = f"upload {upload_id} changed while bytes at {position} were stored"
                    raise Conflict(msg)
        if running is not None and new_offset < record.filesize:
            self.hashes.save(upload_id, new_offset, running)
        else:
            self.hashes.forget(upload_id)
        if receipt is not None:
            events.chunk_stored.send(
                self.uploads,
                upload_id=upload_id,
                owner=record.owner,
                index=index,
                bytes=chunk_end - chunk_start,
                seconds=time.monotonic() - started,
            )
        return got

    def _write_segment(
        self,
        identity: Identity,
        record: UploadRecord,
        position: int,
        data: Any,
        length: int,
        whole: ChunkChecksum | None,
    ) -> tuple[int, str] | None:
        """Write (and fsync) ``length`` bytes at ``position``, under the chunk's lock; the chunk receipt it completes.

        ``whole``: the segment is the whole chunk, with this checksum. A chunk completed by a
        piece (its other bytes came in earlier PATCHes) is hashed as stored, read back from disk.
        """
        blobs, upload_id = self.uploads.blobs, record.upload_id
        index = position // record.chunk_size
        chunk_start = index * record.chunk_size
        chunk_size = chunk_length(record.filesize, record.chunk_size, index)
        current = self.store.get(upload_id)
        if current is None or current.upload_offset != position:
            msg = f"upload {upload_id} moved on meanwhile (another request stored bytes at {position})"
            raise Conflict(msg, details={"offset": current.upload_offset if current else None})
        try:
            with storage_errors():
                if whole is not None:
                    blobs.write_chunk(upload_id, index, chunk_start, data, length)
                    return index, whole.receipt
                blobs.write_piece(upload_id, position, data, length)
                if position + length < chunk_start + chunk_size:
                    return None
                stored = self.uploads.stored_checksum(upload_id, chunk_start, chunk_size, RECEIPT_ALGORITHM)
                return index, stored.receipt
        except PartMissing as err:
            self.uploads.part_missing(identity, record, err)

    def _complete(self, identity: Identity, record: UploadRecord, *, partial: bool) -> None:
        """Every byte is here: queue the normal finalize job (a partial upload waits for its final upload)."""
        if partial:
            log.info(
                "tus partial upload complete: %s (%d bytes) - ID: %s",
                record.filename,
                record.filesize,
                record.upload_id,
            )
            return
        self.uploads.finalize(identity, record.upload_id)

    # --- termination -------------------------------------------------------------------------
    def terminate(self, identity: Identity, upload_id: str) -> None:
        self.get(identity, upload_id)
        self.uploads.abort(identity, upload_id)
        self.hashes.forget(upload_id)


def _copy(body: Any, sink: Any, length: int, *digests: Any) -> int:
    """Copy up to ``length`` bytes from ``body`` into ``sink``, updating each digest; stops early if the client left."""
    copied = 0
    while copied < length:
        try:
            piece = body.read(min(BODY_READ_SIZE, length - copied))
        except (ClientDisconnected, OSError):  # the connection broke mid-body: keep what arrived
            break
        if not piece:
            break
        sink.write(piece)
        for digest in digests:
            if digest is not None:
                digest.update(piece)
        copied += len(piece)
    return copied
