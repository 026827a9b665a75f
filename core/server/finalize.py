"""Finalize one upload: re-hash the assembled bytes, compress them when it pays, store atomically with a sidecar.

The assembled bytes (the part file, or the completed S3 multipart upload) are read
exactly once: hashing and compressing share the pass. Running it again after a crash
is safe: nothing is committed until the verified result is in the store and the
state moves to complete.
Every attempt is fenced by its attempt number: it stages on its own (a file, or an
S3 multipart upload, per attempt), checks it still holds the job before it moves
anything into the store, and its final transition names the attempt, so an attempt
that another has taken over (after its lease ran out) changes and deletes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.checksums import hex_digests_equal
from core.config import ServerConfig
from core.protocol import Codec, ErrorCode, UploadState
from core.server import catalog, events
from core.server.blobs import BlobStore, PartMissing
from core.server.compression import SAMPLE_SIZE, iter_decompressed, open_writer, worth_compressing
from core.server.service import isoformat
from core.server.state_store import StateStore, UploadRecord

log = logging.getLogger("upload_server")

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str | None
    sha256: str


class _Hasher:
    """sha256 always; md5 only if the client declared one (md5 costs twice the CPU of sha256 here)."""

    def __init__(self, *, md5: bool) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        self.size += len(data)

    def result(self) -> Digests:
        return Digests(self.size, self._md5.hexdigest() if self._md5 else None, self._sha256.hexdigest())


class VerificationFailed(Exception):
    """The assembled bytes do not match a checksum the client declared."""


class StaleAttempt(Exception):
    """Another attempt has claimed this job (our lease ran out): stop without touching anything."""


def no_known_sha256(_upload_id: str) -> str | None:
    return None


class Finalizer:
    """Runs finalize jobs; ``known_sha256`` names the in-order sha256 of uploads hashed while they arrived (tus).

    An upload with a known sha256 that is stored raw is not read again: its bytes were hashed on
    their way into the store, so finalize checks the stored size and compares that sha256 with the
    one the client declared. Compressed storage reads the bytes anyway, and checks both.
    """

    def __init__(
        self,
        config: ServerConfig,
        state: StateStore,
        blobs: BlobStore,
        clock: Callable[[], float] = time.time,
        known_sha256: Callable[[str], str | None] = no_known_sha256,
    ) -> None:
        self.config = config
        self.state = state
        self.blobs = blobs
        self.clock = clock
        self.known_sha256 = known_sha256

    def run(self, upload_id: str, progress: Progress, *, attempt: int) -> None:
        """Finalize ``upload_id`` as the job's ``attempt``; raises ``StaleAttempt`` once another attempt holds it."""
        record = self.state.get_upload(upload_id)
        if record is None or record.state is not UploadState.FINALIZING:
            return  # aborted meanwhile, or finished by an earlier attempt
        started = time.monotonic()
        blob_id = record.upload_id
        try:
            # False: a crashed attempt already stored the verified file raw; it stays raw.
            # Assembling may make the raw file visible in the store (S3 completes the multipart upload).
            fence = self._fence(upload_id, attempt)
            fence()
            compressible = self.blobs.assemble(upload_id, blob_id, chunks=record.chunks, fence=fence)
            codec = self._choose_codec(record, blob_id) if compressible else Codec.NONE
            digests = self._store(record, blob_id, codec, progress, attempt)
        except VerificationFailed as err:
            self._fail(record, str(err), attempt)
            return
        except PartMissing as err:
            current = self.state.get_upload(upload_id)
            if current is not None and current.state is UploadState.FINALIZING:
                if self.blobs.stored_size(blob_id, Codec.NONE) is not None:
                    # Not lost: another attempt moved the bytes into the store as this one looked for
                    # them. Raised, the job is retried and finds that copy.
                    raise
                self._lost(record, err, attempt)
                return
            # DELETE /upload/<id> while we read: abort removed the part; nothing to store.
            log.info("Finalize of %s stopped: the upload was aborted meanwhile", upload_id)
            return
        stored_size = self.blobs.stored_size(blob_id, codec) or 0
        verified = bool(record.md5 or record.sha256)
        self._check_current(upload_id, attempt)
        self.blobs.write_sidecar(blob_id, self._sidecar(record, digests, codec, stored_size, verified), attempt=attempt)
        done = self.state.finish_attempt(
            upload_id,
            attempt,
            self.clock(),
            (UploadState.FINALIZING,),
            state=UploadState.COMPLETE,
            blob_id=blob_id,
            codec=codec,
            stored_size=stored_size,
            verified=verified,
            md5=digests.md5,
            sha256=digests.sha256,
            progress=record.filesize,
        )
        if done is None:
            # Taken over: the other attempt owns the stored file now (it may be complete already).
            self._check_current(upload_id, attempt)
            # Still ours, so the upload was aborted while we worked: nothing refers to what we stored.
            self.blobs.delete(blob_id)
            return
        if codec is not Codec.NONE:
            self.blobs.discard_assembled(upload_id, blob_id)  # the compressed copy replaces it
        self.blobs.remove_part(upload_id)
        catalog.record_upload(self.state, self.blobs, done, self.clock())
        self._report(done, time.monotonic() - started)

    def _choose_codec(self, record: UploadRecord, blob_id: str) -> Codec:
        if record.compression is Codec.NONE or record.filesize < self.config.compression_threshold:
            return Codec.NONE
        with self.blobs.open_assembled(record.upload_id, blob_id, SAMPLE_SIZE) as fh:
            sample = fh.read(SAMPLE_SIZE)
        level, saving = self.config.compression_level, self.config.compression_min_saving
        if worth_compressing(record.compression, level, sample, saving):
            return record.compression
        log.info("Not compressing %s: a %s sample did not shrink enough", record.filename, record.compression.value)
        return Codec.NONE

    def _check_current(self, upload_id: str, attempt: int) -> None:
        """Raise ``StaleAttempt`` unless ``attempt`` still holds the job (checked before each move into the store)."""
        if self.state.job_attempt(upload_id) != attempt:
            raise StaleAttempt(upload_id)

    def _fence(self, upload_id: str, attempt: int) -> Callable[[], None]:
        return lambda: self._check_current(upload_id, attempt)

    def _store(self, record: UploadRecord, blob_id: str, codec: Codec, progress: Progress, attempt: int) -> Digests:
        digests = _Hasher(md5=record.md5 is not None)
        known = self.known_sha256(record.upload_id)
        if codec is Codec.NONE and known is not None and record.md5 is None:
            return self._store_known(record, blob_id, known, progress, attempt)
        if codec is Codec.NONE:
            with self.blobs.open_assembled(record.upload_id, blob_id) as source:
                for piece in iter_decompressed(source, Codec.NONE):
                    digests.update(piece)
                    progress(digests.size)
            self._verify(record, digests.result(), known)
            self._check_current(record.upload_id, attempt)
            self.blobs.keep_assembled(record.upload_id, blob_id)
            return digests.result()
        # Staging per attempt: a second attempt never truncates (or completes) the output the first is writing.
        staged = self.blobs.staging(blob_id, codec, attempt=attempt)
        with staged as fh, self.blobs.open_assembled(record.upload_id, blob_id) as source:
            writer = open_writer(
                codec,
                fh,
                level=self.config.compression_level,
                size=record.filesize,
                threads=self.config.compression_threads,
            )
            for piece in iter_decompressed(source, Codec.NONE):
                digests.update(piece)
                writer.write(piece)
                progress(digests.size)
            writer.close()
            self._verify(record, digests.result(), known)  # raising here discards the staged file
            self._check_current(record.upload_id, attempt)  # so does a takeover
        return digests.result()

    def _store_known(
        self, record: UploadRecord, blob_id: str, sha256: str, progress: Progress, attempt: int
    ) -> Digests:
        """Keep the assembled bytes raw without reading them: their sha256 was computed as they were written."""
        self._check_current(record.upload_id, attempt)
        self.blobs.keep_assembled(record.upload_id, blob_id)
        size = self.blobs.stored_size(blob_id, Codec.NONE)
        digests = Digests(size if size is not None else -1, None, sha256)
        self._verify(record, digests)
        progress(record.filesize)
        log.info("Finalize of %s: sha256 computed as the bytes arrived, not re-read", record.upload_id)
        return digests

    @staticmethod
    def _verify(record: UploadRecord, actual: Digests, known_sha256: str | None = None) -> None:
        """The size and every declared checksum; ``known_sha256`` (the in-order hash) must match the re-read too."""
        if known_sha256 is not None and not hex_digests_equal(known_sha256, actual.sha256):
            msg = f"sha256 of the stored file is {actual.sha256}, the bytes hashed as they arrived were {known_sha256}"
            raise VerificationFailed(msg)
        if actual.size != record.filesize:
            msg = f"assembled {actual.size} bytes, expected {record.filesize}"
            raise VerificationFailed(msg)
        for name, declared, computed in (("md5", record.md5, actual.md5), ("sha256", record.sha256, actual.sha256)):
            if declared and not (computed and hex_digests_equal(declared, computed)):
                msg = f"{name} of the assembled file is {computed}, the client declared {declared}"
                raise VerificationFailed(msg)

    def _fail(self, record: UploadRecord, message: str, attempt: int) -> None:
        failed = self.state.finish_attempt(
            record.upload_id,
            attempt,
            self.clock(),
            (UploadState.FINALIZING,),
            state=UploadState.FAILED,
            error_code=ErrorCode.CHECKSUM_MISMATCH.value,
            error_message=message,
        )
        if failed is None:
            self._check_current(record.upload_id, attempt)
            return
        self.blobs.remove_part(record.upload_id)
        self.blobs.discard_assembled(record.upload_id, record.upload_id)  # the assembled raw bytes, or a crash's
        log.warning("Verification failed for %s - ID: %s - %s", record.filename, record.upload_id, message)
        events.upload_failed.send(
            self,
            upload_id=record.upload_id,
            owner=record.owner,
            code=ErrorCode.CHECKSUM_MISMATCH.value,
            message=message,
        )

    def _lost(self, record: UploadRecord, err: PartMissing, attempt: int) -> None:
        """Received bytes are gone (a part lost): end the upload so the client, which still has the file, restarts.

        Fenced like every final transition: a stale attempt that finds the bytes gone (the current
        attempt stored them compressed meanwhile) must not declare them lost.
        """
        lost = self.state.finish_attempt(
            record.upload_id,
            attempt,
            self.clock(),
            (UploadState.FINALIZING,),
            state=UploadState.ABORTED,
            error_code=ErrorCode.PART_MISSING.value,
            error_message=str(err),
        )
        if lost is None:
            self._check_current(record.upload_id, attempt)
            return
        self.blobs.remove_part(record.upload_id)
        self.blobs.discard_assembled(record.upload_id, record.upload_id)
        log.error("Lost upload data: %s - ID: %s - %s", record.filename, record.upload_id, err)
        events.upload_failed.send(
            self, upload_id=record.upload_id, owner=record.owner, code=ErrorCode.PART_MISSING.value, message=str(err)
        )

    def _sidecar(
        self, record: UploadRecord, digests: Digests, codec: Codec, stored_size: int, verified: bool
    ) -> dict[str, object]:
        return {
            "upload_id": record.upload_id,
            "client": record.owner,
            "original_filename": record.filename,
            "filesize": record.filesize,
            "stored_size": stored_size,
            "codec": codec.value,
            "md5": digests.md5,
            "sha256": digests.sha256,
            "verified": verified,
            "metadata": record.metadata,
            "created_at": isoformat(record.created_at),
            "completed_at": isoformat(self.clock()),
        }

    def _report(self, record: UploadRecord, seconds: float) -> None:
        stored = record.stored_size or 0
        if record.codec not in (None, Codec.NONE):
            reduction = 100.0 * (1 - stored / record.filesize) if record.filesize else 0.0
            log.info(
                "Compressed %s: %d → %d bytes (%.1f%% reduction)", record.filename, record.filesize, stored, reduction
            )
        log.info(
            "Completed upload: %s (%d bytes) - ID: %s - verified: %s - sha256 %s - %.1fs",
            record.filename,
            record.filesize,
            record.upload_id,
            record.verified,
            record.sha256,
            seconds,
        )
        events.send_upload_completed(self, record, seconds)
