"""One bag's way to a verified copy on the server: init or resume, send missing chunks, finalize, confirm.

The file is read once: each chunk gets its ``X-Chunk-CRC32C`` (``X-Chunk-SHA256`` for a
server without FEATURE_CHUNK_CRC32C) and goes, in file order, into the whole-file sha256
that finalize declares. The server is the source of truth for which chunks it has: a
resumed job asks for the upload's status and sends only what is missing (reading the others just to hash them, if
the journal has no whole-file sha256 yet). Every outcome leaves the journal in a
state the next ``start()`` can continue from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.checksums import ChunkChecksum, Hasher, StreamingDigests, chunk_hasher, fingerprint, iter_file
from core.client.bandwidth import TokenBucket
from core.client.chunk_reader import ChunkBuffers, read_hashed
from core.client.compressibility import worth_compressing
from core.client.errors import (
    FileChangedError,
    PermanentUploadError,
    ServerFailedError,
    StalledTransferError,
    TransferAbortedError,
    TransientUploadError,
    UploadError,
    UploadExpiredError,
)
from core.client.events import EventBus, EventKind, RateMeter, UploadEvent
from core.client.journal import JobRecord, JobState, Journal
from core.client.retention import LocalCopy, Retention, ServerConfirmation, confirm, finish_retention, plan_retention
from core.client.retry import RetryPolicy
from core.client.transfer import ConnectionSlot, ServerClient
from core.client.watchdog import Verdict, Watch, Watchdog
from core.protocol import (
    DEFAULT_CHUNK_SIZE,
    FEATURE_FINALIZE_SHA256,
    BlockedReason,
    ErrorCode,
    InitRequest,
    UploadState,
    chunk_count,
    chunk_length,
)

log = logging.getLogger("core.network_manager")

# A failed, expired or changed upload is re-hashed and re-initialised at most this often in one run before it parks.
MAX_REINITS = 3
# Finalize replies that mean "not yet": ask for the missing chunks instead of retrying the finalize.
FINALIZE_REFUSALS = frozenset({ErrorCode.UPLOAD_INCOMPLETE.value, ErrorCode.CONFLICT.value})
# Finalize calls answered "incomplete" in a row before the job parks.
MAX_FINALIZE_ROUNDS = 5
PROGRESS_EVENT_INTERVAL = 0.25
PROGRESS_SAVE_INTERVAL = 1.0  # seconds between journal writes of mere progress
# What progress resets: the park counter, the error, and whatever blocked the upload.
_MOVING: dict[str, Any] = {"attempts": 0, "parks": 0, "error": None, "blocked": None, "blocked_until": None}
# Replies to a chunk piece after which the chunk is started over from its first byte, once.
_PIECE_REFUSALS = frozenset({ErrorCode.CHUNK_SIZE_MISMATCH.value, ErrorCode.CHECKSUM_MISMATCH.value})
T = TypeVar("T")
Chunk = tuple[int, memoryview, ChunkChecksum]  # index, bytes (lent by ChunkBuffers), checksum


class _FinalizeRefused(UploadError):
    """The server answered the finalize with "incomplete" or "conflict": not an error, a request for chunks."""


def watchdog_message(err: StalledTransferError, watch: Watch, settings: JobSettings, chunk_size: int) -> str:
    """Name the timeout that fired, with its value, and the chunk size that makes it less likely."""
    if watch.verdict is Verdict.DEADLINE:
        fired = f"upload_timeout ({settings.upload_timeout:g}s for one chunk) expired"
    else:
        fired = f"stalled_timeout ({settings.stalled_timeout:g}s without progress) expired"
    hint = f"on a slow or flaky link a smaller chunk_size helps (now {chunk_size} bytes; try {max(1, chunk_size // 4)})"
    return f"{err}: {fired}; {hint}"


def stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    """What says a file is still the one we hashed: size, mtime and inode (a replaced file has a new inode)."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def known(value: T | None, what: str) -> T:
    """A journal field an earlier step filled in; missing means a hand-edited or foreign journal."""
    if value is None:
        msg = f"journal record lacks {what}"
        raise PermanentUploadError(msg)
    return value


@dataclass(frozen=True)
class JobSettings:
    """The manager's tunables, read afresh for every job (they may change while running)."""

    upload_timeout: float = 300.0
    init_timeout: float = 10.0
    stalled_timeout: float = 60.0
    max_retries: int = 5
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_parallelism: int = 1
    retention: Retention = Retention.KEEP
    uploaded_dir: Path | None = None
    poll_interval: float = 0.2
    # At most this long between "verified" on the server and the client seeing it (a status poll is ~1 ms).
    max_poll_interval: float = 0.5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


class UploadJob:
    """Runs one journal record until it completes, fails, parks, or ``stopping`` is set."""

    def __init__(
        self,
        record: JobRecord,
        *,
        journal: Journal,
        client: ServerClient,
        settings: Callable[[], JobSettings],
        bucket: TokenBucket,
        watchdog: Watchdog,
        events: EventBus,
        stopping: threading.Event,
        sleep: Callable[[float], None],
        on_blocked: Callable[[str, str | None], object] | None = None,
    ) -> None:
        self.record = record
        self._path = Path(record.path)  # a job never changes its path (retention moves the bag after it ended)
        self.on_blocked = on_blocked
        self.journal = journal
        self.client = client
        self._settings = settings
        self.bucket = bucket
        self.watchdog = watchdog
        self.events = events
        self.stopping = stopping
        self.sleep = sleep
        self.meter = RateMeter()
        self._lock = threading.Lock()
        self._inflight = 0
        self._last_progress_event = 0.0
        self._last_save = 0.0  # monotonic time of the last journal write
        self._progress_unsaved = False  # ``record.bytes_sent`` is ahead of the journal's
        # Server uploads this run gave up on: an init that resumes one of them by fingerprint is redone by sha256.
        self._abandoned: set[str] = set()

    @property
    def settings(self) -> JobSettings:
        """The manager's current tunables: a change while running applies from the next request."""
        return self._settings()

    # --- bookkeeping -----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    def _save(self, **changes: Any) -> JobRecord:
        # Progress that ``_moving`` kept in memory only is journaled with whatever is saved next.
        changes.setdefault("bytes_sent", self.record.bytes_sent)
        self.record = self.journal.update(self.record.job_id, **changes)
        self._last_save = time.monotonic()
        self._progress_unsaved = False
        return self.record

    def bytes_sent(self) -> int:
        """Acknowledged bytes plus the bytes of chunks in flight."""
        total = self.record.size or 0
        return min(total, self.record.bytes_sent + self._inflight)

    def _event(self, kind: EventKind, **extra: Any) -> None:
        rec = self.record
        total = rec.size or 0
        sent = self.bytes_sent()
        self.events.emit(
            UploadEvent(
                kind=kind,
                job_id=rec.job_id,
                path=rec.path,
                state=rec.state,
                bytes_sent=sent,
                total=total,
                rate=self.meter.rate(),
                eta=self.meter.eta(max(0, total - sent)),
                attempt=rec.attempts,
                upload_id=rec.upload_id,
                error=rec.error,
                blocked=rec.blocked,
                blocked_until=rec.blocked_until,
                **extra,
            )
        )

    def enter(self, state: JobState, **changes: Any) -> None:
        if self.record.state is state and not changes:
            return
        self._save(state=state, **changes)
        log.info(
            "upload %s: %s %s (%s bytes, upload id %s)",
            self.record.job_id,
            state.value,
            self.record.path,
            self.record.size,
            self.record.upload_id,
        )
        self._event(EventKind.STATE, verified=state is JobState.COMPLETE)

    def _on_piece(self, nbytes: int) -> None:
        with self._lock:
            self._inflight += nbytes
        if nbytes:
            self.meter.add(nbytes)
        now = time.monotonic()
        if now - self._last_progress_event >= PROGRESS_EVENT_INTERVAL:
            self._last_progress_event = now
            self._event(EventKind.PROGRESS)

    def _on_retry(self, err: UploadError, attempt: int, delay: float) -> None:
        log.warning("upload %s: attempt %d failed (%s); retrying in %.1fs", self.record.job_id, attempt, err, delay)
        blocked = getattr(err, "blocked", None)
        if self.on_blocked is not None:
            self.on_blocked(self.record.job_id, blocked)
        self._save(
            attempts=self.record.attempts + 1,
            error=str(err),
            blocked=blocked,
            blocked_until=time.time() + delay if blocked else None,
        )
        self._event(EventKind.RETRY, retry_in=delay)

    def _moving(self, bytes_sent: int) -> None:
        """Progress was made: the park counter starts over and nothing blocks the upload any more.

        Progress alone is journaled at most every PROGRESS_SAVE_INTERVAL: ``bytes_sent`` is shown, never
        trusted (a resume asks the server which chunks it holds), and a commit per chunk cost ~0.05 CPU s/GiB.
        """
        rec = self.record
        settled = all(getattr(rec, name) == value for name, value in _MOVING.items())
        if settled and time.monotonic() - self._last_save < PROGRESS_SAVE_INTERVAL:
            self.record = dataclasses.replace(rec, bytes_sent=bytes_sent)
            self._progress_unsaved = True
            return
        self._save(**_MOVING, bytes_sent=bytes_sent)

    def _policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            max_retries=s.max_retries,
            initial=s.backoff_initial,
            maximum=s.backoff_max,
            sleep=self.sleep,
            on_retry=self._on_retry,
        )

    def _check_stopping(self) -> None:
        if self.stopping.is_set():
            msg = f"upload {self.record.job_id} interrupted by stop(); it resumes on the next start()"
            raise TransferAbortedError(msg)

    # --- steps -------------------------------------------------------------------------------
    def run(self) -> JobRecord:
        """Run to an outcome; TransferAbortedError leaves the job resumable, other errors end or park it.

        A server upload that failed or expired, a copy that did not verify, or a
        bag that changed on disk all lead to the same recovery: hash the file
        again (while sending it) as a new upload.
        """
        try:
            last: UploadExpiredError | None = None
            for _ in range(MAX_REINITS):
                self._ensure_identity(rehash=last is not None)
                try:
                    return self._upload()
                except UploadExpiredError as err:
                    last = err
                    changed = isinstance(err, FileChangedError)
                    reason = BlockedReason.FILE_CHANGING if changed else BlockedReason.SERVER_FAILED
                    if self.record.upload_id:
                        self._abandoned.add(self.record.upload_id)
                    log.warning("upload %s: %s; re-hashing and starting over with a new init", self.record.job_id, err)
                    self._save(upload_id=None, bytes_sent=0, error=str(err), blocked=reason.value)
            msg = f"upload had to start over {MAX_REINITS} times in a row; last: {last}"
            raise TransientUploadError(msg, blocked=self.record.blocked)
        finally:
            self._inflight = 0
            if self._progress_unsaved:  # a stop or an error ended the run between two saves of progress
                self._save()

    def _hashed_key(self) -> tuple[int | None, int | None, int | None]:
        rec = self.record
        return rec.size, rec.mtime_ns, rec.inode

    def _unchanged(self, stat: os.stat_result) -> bool:
        size, mtime_ns, inode = self._hashed_key()
        return (size, mtime_ns) == (stat.st_size, stat.st_mtime_ns) and inode in (None, stat.st_ino)

    def _check_unchanged(self, stat: os.stat_result | None = None, *, when: str) -> None:
        """Raise FileChangedError when the bag is no longer the one that was hashed (grown, rewritten, replaced)."""
        stat = stat or self.path.stat()
        if not self._unchanged(stat):
            size, mtime_ns, inode = self._hashed_key()
            msg = (
                f"{self.path} changed {when} (size {size} -> {stat.st_size}, mtime {mtime_ns} -> "
                f"{stat.st_mtime_ns}, inode {inode} -> {stat.st_ino})"
            )
            raise FileChangedError(msg)

    def _ensure_identity(self, *, rehash: bool = False) -> None:
        """Note which file this upload sends (size, mtime, inode), unless the journal already names it as it is.

        Nothing is read here but a few compressibility samples: the sha256 is computed while the
        chunks are read for sending (``_send_chunks``), and journaled once every chunk was hashed.
        """
        stat = self.path.stat()
        rec = self.record
        if rec.size is not None and not rehash and self._unchanged(stat):
            return
        if rec.upload_id:
            log.warning("upload %s: %s changed since it was hashed; starting a new upload", rec.job_id, rec.path)
        self.enter(JobState.HASHING, upload_id=None, bytes_sent=0, sha256=None, md5=None)
        compression = worth_compressing(self.path, stat.st_size)
        if stat_key(self.path.stat()) != stat_key(stat):
            msg = f"{self.path} is still being written; retrying later"
            raise TransientUploadError(msg, blocked=BlockedReason.FILE_CHANGING.value)
        self._save(size=stat.st_size, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino, compression=compression)

    def _hash_whole(self, *, md5: bool) -> None:
        """Read the whole bag for its sha256 (and the seed's md5) before sending; ``stop()`` interrupts it.

        Only where reading once is not enough: a server without FEATURE_FINALIZE_SHA256 (it must be told
        the checksum at init), a likely duplicate (no byte needs to move if it is one), or a resumed upload
        the server already holds whole.
        """
        self.enter(JobState.HASHING)
        digests = StreamingDigests(md5=md5)
        for piece in iter_file(self.path):
            self._check_stopping()
            digests.update(piece)
        result = digests.result()
        self._check_unchanged(when="while it was hashed")
        self._save(sha256=result.sha256, md5=result.md5)

    def _init(self) -> dict[str, Any]:
        """A new upload. Without a known sha256 it declares only a fingerprint: finalize declares the sha256.

        A server that does not list FEATURE_FINALIZE_SHA256 in its init reply would ignore that finalize
        body and never verify the copy: the upload it just made is abandoned and the bag is hashed first.
        """
        if self.record.sha256 is None and not self.client.finalize_sha256:
            self._hash_whole(md5=True)
        reply = self._init_request()
        if self.record.sha256 is None and FEATURE_FINALIZE_SHA256 not in (reply.get("features") or ()):
            log.warning(
                "upload %s: the server does not take the sha256 at finalize; hashing %s before init",
                self.record.job_id,
                self.record.path,
            )
            self.client.finalize_sha256 = False
            self.client.abandon(reply["upload_id"], self.settings.init_timeout)
            self._hash_whole(md5=True)
            reply = self._init_request()
        if self.record.sha256 is None and reply.get("upload_id") in self._abandoned:
            # The fingerprint (size, head, tail) resumed an upload that failed us: another file with the same
            # edges, or a bag rewritten in its middle. The sha256 names this file exactly.
            log.warning("upload %s: init resumed %s again; hashing it first", self.record.job_id, reply["upload_id"])
            self._hash_whole(md5=False)
            reply = self._init_request()
        if reply.get("dedup_candidate") and self.record.sha256 is None:
            # The server holds a verified file of this size and fingerprint: if the sha256 matches too,
            # finalize completes the upload as its copy and not one chunk is sent.
            log.info("upload %s: the server may have %s already; hashing it first", self.record.job_id, self.path)
            self._hash_whole(md5=False)
            return self._finalize()
        return reply

    def _init_request(self) -> dict[str, Any]:
        rec = self.record
        size = known(rec.size, "size")
        chunk_size = self.settings.chunk_size
        request: InitRequest = {
            "filename": self.path.name,
            "filesize": size,
            "chunks": chunk_count(size, chunk_size),
            "chunk_size": chunk_size,
            "compression": bool(rec.compression),
            "metadata": rec.metadata,
            "fingerprint": fingerprint(self.path),
        }
        if rec.sha256 is not None:
            request["sha256"] = rec.sha256
        if rec.md5 is not None:
            request["checksum"] = rec.md5
        self.enter(JobState.INITIALIZING)
        reply = self._policy().call(lambda: self.client.init(request, self.settings.init_timeout))
        upload_id = reply.get("upload_id")
        if not upload_id:
            msg = f"init of {rec.path} answered without an upload_id: {str(reply)[:200]}"
            raise PermanentUploadError(msg)
        size = int(reply.get("chunk_size") or chunk_size)
        chunks = int(reply.get("chunks") or chunk_count(rec.size, size))
        self._save(upload_id=upload_id, chunk_size=size, chunks=chunks, error=None, blocked=None, blocked_until=None)
        log.info(
            "upload %s: init %s -> %s (%d bytes, %d chunks of %d, compression %s, deduplicated %s)",
            rec.job_id,
            rec.path,
            upload_id,
            rec.size,
            chunks,
            size,
            reply.get("compression_enabled"),
            bool(reply.get("deduplicated")),
        )
        reply.setdefault("state", UploadState.UPLOADING.value)
        return reply

    def _status(self) -> dict[str, Any]:
        upload_id = known(self.record.upload_id, "upload_id")
        return self._policy().call(lambda: self.client.status(upload_id, self.settings.init_timeout))

    def _open(self) -> dict[str, Any]:
        """Resume the journaled server upload if there is one, else init a new one."""
        if self.record.upload_id:
            self.enter(JobState.INITIALIZING)
            status = self._status()
            if status.get("state") == UploadState.ABORTED.value:
                msg = f"upload {self.record.upload_id} was aborted on the server"
                raise UploadExpiredError(msg)
            log.info(
                "upload %s: resuming %s (%d chunks on the server)",
                self.record.job_id,
                self.record.upload_id,
                len(status.get("received") or []),
            )
            return status
        return self._init()

    def _missing(self, status: dict[str, Any]) -> list[int]:
        chunks = self.record.chunks or 1
        if isinstance(status.get("missing"), list):
            return sorted(int(i) for i in status["missing"])
        received = {int(i) for i in status.get("received") or []}
        return [i for i in range(chunks) if i not in received]

    def _acked_bytes(self, missing: Iterable[int]) -> int:
        size, chunk_size = known(self.record.size, "size"), known(self.record.chunk_size, "chunk_size")
        return size - sum(chunk_length(size, chunk_size, i) for i in missing)

    def _upload(self) -> JobRecord:
        status = self._open()
        finalize_rounds = 0
        poll = self.settings.poll_interval
        while True:
            self._check_stopping()
            state = status.get("state")
            if state == UploadState.UPLOADING.value:
                finalize_rounds += 1
                if finalize_rounds > MAX_FINALIZE_ROUNDS:
                    msg = f"server keeps reporting upload {self.record.upload_id} incomplete"
                    raise TransientUploadError(msg)
                missing = self._missing(status)
                self.enter(JobState.UPLOADING, bytes_sent=self._acked_bytes(missing))
                self._send_chunks(missing)
                status = self._finalize()
            elif self.record.sha256 is None and state in (UploadState.FINALIZING.value, UploadState.COMPLETE.value):
                # Resumed (by fingerprint or journal) onto an upload the server holds whole: our sha256 is what
                # "verified" gets compared with, so it is computed before the server's answer counts.
                self._hash_whole(md5=False)
            elif state == UploadState.FINALIZING.value:
                self.enter(JobState.FINALIZING)
                self.sleep(poll)
                poll = min(poll * 1.5, self.settings.max_poll_interval)
                status = self._status()
            elif state == UploadState.COMPLETE.value:
                return self._complete(status)
            elif state == UploadState.FAILED.value:
                error = status.get("error")
                msg = f"server failed upload {self.record.upload_id}: {error}"
                raise ServerFailedError(msg)
            elif state == UploadState.ABORTED.value:
                msg = f"upload {self.record.upload_id} was aborted on the server"
                raise UploadExpiredError(msg)
            else:
                msg = f"server reported unknown state {state!r} for upload {self.record.upload_id}"
                raise TransientUploadError(msg)

    def _finalize(self) -> dict[str, Any]:
        upload_id = known(self.record.upload_id, "upload_id")
        sha256 = known(self.record.sha256, "sha256")
        # A bag that grew or was rewritten after hashing must not be finalized as its old prefix.
        self._check_unchanged(when="while it was uploaded")
        self.enter(JobState.FINALIZING)

        def attempt() -> dict[str, Any]:
            try:
                return self.client.finalize(upload_id, self.settings.init_timeout, sha256=sha256)
            except UploadError as err:
                if err.code in FINALIZE_REFUSALS:
                    raise _FinalizeRefused(str(err), status=err.status, code=err.code) from err
                if err.code == ErrorCode.CHECKSUM_MISMATCH.value:
                    # The assembled bytes are not the ones we hashed (the bag changed?): hash again, new upload.
                    raise ServerFailedError(str(err), status=err.status, code=err.code) from err
                raise

        try:
            self._policy().call(attempt)
        except _FinalizeRefused as err:
            log.warning("upload %s: finalize refused (%s); asking for missing chunks", self.record.job_id, err)
        return self._status()

    def _complete(self, status: dict[str, Any]) -> JobRecord:
        if status.get("verified") is not True or not status.get("sha256"):
            # Init and finalize replies may be brief (a deduplicated init says only "complete"): ask for the details.
            status = self._status()
        rec = self.record
        upload_id = known(rec.upload_id, "upload_id")
        confirmation = ServerConfirmation(upload_id, status.get("verified") is True, status.get("sha256"))
        local = local_copy(rec)
        confirm(confirmation, local)
        self._check_unchanged(when="before the server verified it")
        policy = self.settings.retention
        target = plan_retention(policy, local, self.settings.uploaded_dir)
        # Journal "complete" (and where the bag will go) first: a crash before retention acts is finished on
        # the next start, never mistaken for a bag that disappeared.
        self.enter(
            JobState.COMPLETE,
            bytes_sent=local.size,
            error=None,
            blocked=None,
            blocked_until=None,
            codec=status.get("codec"),
            stored_size=status.get("stored_size"),
            retention=policy.value,
            final_path=None if target is None else str(target),
            retention_pending=policy is not Retention.KEEP,
        )
        return finish_pending_retention(self.journal, self.record)

    # --- chunks ----------------------------------------------------------------------------
    def _send_chunks(self, missing: list[int]) -> None:
        """Send ``missing`` in order, ``chunk_parallelism`` at a time; the first error stops the rest.

        Without a journaled sha256 every chunk is read in file order and hashed into it (the ones
        the server has are read only for that); the digest is journaled once the last was read.
        """
        whole = None if self.record.sha256 else hashlib.sha256()
        order = range(known(self.record.chunks, "chunks")) if whole is not None else missing
        buffers = ChunkBuffers(known(self.record.chunk_size, "chunk_size"))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            chunks = self._chunks_to_send(fd, order, set(missing), whole, buffers)
            width = max(1, min(self.settings.chunk_parallelism, len(missing)))
            if width == 1:
                for chunk in chunks:
                    self._send_chunk(*chunk)
                    buffers.give_back(chunk[1])
            else:
                self._send_parallel(chunks, width, buffers)
        finally:
            os.close(fd)
        if whole is not None:
            self._check_unchanged(when="while it was hashed")
            self._save(sha256=whole.hexdigest())

    def _chunks_to_send(
        self, fd: int, order: Iterable[int], wanted: set[int], whole: hashlib._Hash | None, buffers: ChunkBuffers
    ) -> Iterator[Chunk]:
        """(index, bytes, checksum) of each wanted chunk, read in ``order``; every chunk read feeds ``whole``.

        Each chunk's bytes are lent by ``buffers``; the consumer gives them back once the chunk was sent.
        """
        algorithm = self.client.chunk_algorithm
        for index in order:
            self._check_stopping()
            chunk = chunk_hasher(algorithm) if index in wanted else None
            data = self._read_chunk(fd, index, [h for h in (whole, chunk) if h is not None], buffers)
            if chunk is None:
                buffers.give_back(data)
            else:
                yield index, data, ChunkChecksum(algorithm, chunk.hexdigest())

    def _send_parallel(self, chunks: Iterator[Chunk], width: int, buffers: ChunkBuffers) -> None:
        """``width`` threads send chunks as they are read; reading (and the whole-file hash) stays in order."""
        lock = threading.Lock()
        failures: list[BaseException] = []

        def worker() -> None:
            try:
                send_until_done()
            finally:
                self.client.close()  # this thread's session

        def send_until_done() -> None:
            while True:
                try:
                    with lock:
                        if failures:
                            return
                        chunk = next(chunks, None)
                    if chunk is None:
                        return
                    self._send_chunk(*chunk)
                    buffers.give_back(chunk[1])
                except BaseException as err:
                    with lock:
                        failures.append(err)
                    return

        threads = [threading.Thread(target=worker, name=f"chunks-{self.record.job_id[:8]}-{n}") for n in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def _read_chunk(self, fd: int, index: int, hashers: Iterable[Hasher], buffers: ChunkBuffers) -> memoryview:
        """Chunk ``index`` in a buffer lent by ``buffers``; every byte read is fed to ``hashers`` (``chunk_reader``)."""
        rec = self.record
        chunk_size = known(rec.chunk_size, "chunk_size")
        length = chunk_length(known(rec.size, "size"), chunk_size, index)
        data = buffers.lend(length)
        read = read_hashed(fd, data, index * chunk_size, hashers)
        if read != length:
            msg = f"{rec.path} shrank while uploading (chunk {index} short by {length - read} bytes)"
            raise FileChangedError(msg)
        # The bytes must come from the file whose identity was noted: a rewrite (same inode, so fstat sees it) or a
        # replacement (a new inode at the path) between hash and read is re-hashed.
        self._check_unchanged(os.fstat(fd), when=f"before chunk {index} was read")
        self._check_unchanged(when=f"before chunk {index} was read")
        return data

    def _send_chunk(self, index: int, data: memoryview, chunk_checksum: ChunkChecksum) -> None:
        """Send chunk ``index`` whole, or in pieces while the link keeps breaking (``core.client.chunk_sizing``).

        Acknowledged pieces are kept across attempts, so each retry sends only what the server does not
        have; the chunk counts as sent once the server acknowledged the piece that completes it.
        """
        upload_id = known(self.record.upload_id, "upload_id")
        sizer = self.client.sizer
        acked = 0  # bytes of this chunk acknowledged as pieces
        restarted = False  # the chunk was started over once after a refused piece

        def attempt() -> bool:
            """One request; True once the chunk is acknowledged, False after a piece of it."""
            nonlocal acked, restarted
            self._check_stopping()
            length = sizer.piece(acked, len(data))
            offset = None if length == len(data) else acked
            s = self.settings
            slot = ConnectionSlot()
            sent = 0

            def on_piece(nbytes: int) -> None:
                nonlocal sent
                if nbytes:
                    watch.handed(nbytes)
                else:
                    watch.progress()  # waited on our own bandwidth limit
                sent += nbytes
                if sent == length:
                    watch.body_sent()
                self._on_piece(nbytes)

            what = f"chunk {index} of {upload_id}" + ("" if offset is None else f" (piece at {offset})")
            watch = self.watchdog.watch(
                what, slot.abort, stall_after=s.stalled_timeout, deadline=s.upload_timeout, probe=slot
            )
            try:
                reply = self.client.put_chunk(
                    upload_id,
                    index,
                    memoryview(data)[acked : acked + length],
                    connect_timeout=s.init_timeout,
                    read_timeout=s.upload_timeout,
                    bucket=self.bucket,
                    on_piece=on_piece,
                    slot=slot,
                    offset=offset,
                    chunk_checksum=chunk_checksum,
                )
            except StalledTransferError as err:
                if self.stopping.is_set():
                    raise TransferAbortedError(str(err)) from err
                sizer.failed(sent, len(data))
                raise StalledTransferError(
                    watchdog_message(err, watch, s, chunk_size=known(self.record.chunk_size, "chunk_size")),
                    blocked=BlockedReason.UNREACHABLE.value,
                ) from err
            except (TransientUploadError, PermanentUploadError) as err:
                if isinstance(err, TransientUploadError) and err.status is None:  # the link broke, not a refusal
                    sizer.failed(sent, len(data))
                # A 400 is retried like any other refusal (core/client/retry.py), except these for a piece.
                if offset is None or err.status != 400 or err.code not in _PIECE_REFUSALS or restarted:
                    raise
                # An older server (size mismatch: whole chunks from now on) or a chunk whose stored pieces
                # differ (checksum mismatch): start the chunk over from its first byte, once.
                log.warning("upload %s: %s; starting chunk %d over", upload_id, err, index)
                if err.code == ErrorCode.CHUNK_SIZE_MISMATCH.value:
                    sizer.pieces_supported = False
                restarted = True
                with self._lock:
                    self._inflight -= acked
                    acked = 0
                return False
            finally:
                self.watchdog.unwatch(watch)
                with self._lock:
                    self._inflight -= sent
            sizer.succeeded(length, len(data))
            if offset is None or reply.get("chunk_complete") is True:
                return True
            with self._lock:
                acked += length
                self._inflight += length  # acknowledged pieces count as in flight until the chunk is recorded
            return False

        try:
            while not self._policy().call(attempt):
                pass
        finally:
            with self._lock:
                self._inflight -= acked
        with self._lock:
            self._moving(bytes_sent=self.record.bytes_sent + len(data))
        self._event(EventKind.PROGRESS)


def local_copy(rec: JobRecord) -> LocalCopy:
    """The hashed identity of a journaled bag, as retention checks it."""
    return LocalCopy(
        Path(rec.path),
        known(rec.sha256, "sha256"),
        known(rec.size, "size"),
        known(rec.mtime_ns, "mtime_ns"),
        rec.inode,
    )


def finish_pending_retention(journal: Journal, rec: JobRecord) -> JobRecord:
    """Let the retention policy act on a complete job (again, after a crash); clears ``retention_pending``."""
    if not rec.retention_pending:
        return rec
    policy = Retention(rec.retention or Retention.KEEP.value)
    target = Path(rec.final_path) if rec.final_path else None
    where = finish_retention(policy, local_copy(rec), target, rec.upload_id or "?")
    return journal.update(rec.job_id, retention_pending=False, final_path=None if where is None else str(where))
