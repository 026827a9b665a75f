"""The blob-store interface: what the upload service and the finalizer need from wherever the bytes live.

Two kinds of bytes pass through a store:

* the *part* of an upload in progress: chunks land in it at any time, in any order,
  from any app host, each durable before it is acknowledged;
* *stored blobs*: the verified file (raw, or compressed when that paid) plus a JSON
  sidecar with its facts (codec, sizes, sha256, metadata), immutable once written.

Every key or path is built from server-generated ids (32 lowercase hex digits),
never from client filenames.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.protocol import Codec

_ID = re.compile(r"[0-9a-f]{32}")
SUFFIX = {Codec.NONE: "", Codec.ZSTD: ".zst", Codec.GZIP: ".gz"}


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def checked(blob_or_upload_id: str) -> str:
    if not is_valid_id(blob_or_upload_id):
        msg = f"not a server-generated id: {blob_or_upload_id!r}"
        raise ValueError(msg)
    return blob_or_upload_id


class StoreUnavailable(Exception):
    """The store cannot be reached or is overloaded right now: nothing was acknowledged, retry later (503)."""


class StoreMisconfigured(Exception):
    """The store named by BLOB_STORE_URI cannot be used at all (e.g. its bucket does not exist)."""


class PartMissing(Exception):
    """The bytes of an upload in progress are gone (part file deleted, multipart upload aborted, a part lost)."""

    def __init__(self, upload_id: str, detail: str) -> None:
        super().__init__(f"the received data of upload {upload_id} is missing: {detail}")
        self.upload_id = upload_id


@dataclass(frozen=True)
class StoredObject:
    """One object of the stored-blob area, for backups: its name relative to the store and its size."""

    name: str
    size: int


def no_fence() -> None:
    """The default fence of ``assemble``: nobody else may hold the job."""


class BlobStore(abc.ABC):
    """Bytes of uploads in progress and of stored files; implementations: ``LocalBlobStore``, ``S3BlobStore``."""

    #: "local" or "s3", for logs, /health/detailed and backups.
    kind: str = ""
    #: A human-readable location (a directory or s3://bucket/prefix) for log lines and errors.
    location: str = ""
    #: Whether a chunk may arrive in pieces (X-Chunk-Offset): the store keeps a partial chunk durable
    #: and reads the whole chunk back to verify it. S3 cannot (a multipart part is written whole and
    #: cannot be read before the upload completes), so it takes whole chunks only.
    supports_pieces: bool = False
    #: Whether ``chunk_lock`` excludes writers on every host (a lock file on the one disk), not only in
    #: this process (S3): only then may bytes hashed on their way in stand for the bytes stored.
    exclusive_chunk_lock: bool = False
    #: The local directory the bytes land in (its free space is what MIN_FREE_DISK guards); None off-host.
    local_root: Path | None = None

    # --- uploads in progress --------------------------------------------------------------
    @abc.abstractmethod
    def create_part(self, upload_id: str, size: int, chunk_size: int, *, size_known: bool = True) -> None:
        """Prepare to receive the chunks of a ``size``-byte upload (chunks of ``chunk_size``, the last shorter).

        ``size_known`` False: ``size`` is only an upper bound (tus Upload-Defer-Length); nothing may
        be reserved for it, and the chunks end wherever the declared size will put the last one.
        """

    @abc.abstractmethod
    def write_chunk(self, upload_id: str, index: int, offset: int, data: IO[bytes], length: int) -> None:
        """Store ``length`` verified bytes read from ``data`` as chunk ``index``; durable when this returns.

        Raises ``PartMissing`` if the upload's part is gone (aborted, swept, lost).
        """

    def write_piece(self, upload_id: str, offset: int, data: IO[bytes], length: int) -> None:
        """Store ``length`` verified bytes of a chunk piece at byte ``offset`` of the upload; durable on return.

        Only stores with ``supports_pieces``; the service refuses pieces for the others.
        """
        msg = f"the {self.kind} blob store takes whole chunks only"
        raise NotImplementedError(msg)

    @abc.abstractmethod
    def read_part(self, upload_id: str, offset: int, length: int) -> Iterator[bytes]:
        """The received bytes [offset, offset + length) of an upload in progress (a chunk checked after its pieces).

        Raises ``PartMissing`` if the upload's part is gone.
        """

    @abc.abstractmethod
    def remove_part(self, upload_id: str) -> None:
        """Discard everything received for an upload in progress (abort, expiry, after storing). Idempotent."""

    @abc.abstractmethod
    def chunk_lock(self, upload_id: str, index: int) -> AbstractContextManager[None]:
        """Serialise writers of one chunk: held only while a verified chunk is written and recorded."""

    @abc.abstractmethod
    def part_ages(self, now: float | None = None) -> dict[str, float]:
        """upload_id → seconds between the last write of its received data and ``now`` (wall clock, default now).

        Every upload that has received data (or only a prepared part) is listed: the orphan sweep
        decides from the state store which of them no upload owns any more.
        """

    def parts_idle_since(self, before: float) -> Iterator[str]:
        """Ids of uploads with received data untouched since ``before`` (unix time)."""
        now = time.time()
        for upload_id, age in self.part_ages(now).items():
            if now - age < before:
                yield upload_id

    @abc.abstractmethod
    def remove_stale_staging(self, older_than: float) -> int:
        """Discard staged output untouched for ``older_than`` seconds (attempts that crashed or were fenced).

        Never the received data of an upload in progress. Returns how many staged objects went.
        """

    # --- finalize ----------------------------------------------------------------------------
    @abc.abstractmethod
    def assemble(self, upload_id: str, blob_id: str, *, chunks: int, fence: Callable[[], None] = no_fence) -> bool:
        """Put the received chunks together as one file; True if it may still be compressed.

        False means a crashed earlier attempt already stored it raw as ``blob_id``.
        Raises ``PartMissing`` naming a chunk whose bytes are gone. Safe to repeat.
        ``fence`` is called right before the assembled bytes become visible in the store (it
        raises to stop an attempt that another has taken over).
        """

    @abc.abstractmethod
    def open_assembled(
        self, upload_id: str, blob_id: str, length: int | None = None
    ) -> AbstractContextManager[IO[bytes]]:
        """The assembled bytes from the start (at most ``length``), read once by finalize for its sha256."""

    @abc.abstractmethod
    def keep_assembled(self, upload_id: str, blob_id: str) -> None:
        """Make the assembled bytes the stored raw blob ``blob_id`` (a rename on disk, nothing on S3)."""

    @abc.abstractmethod
    def discard_assembled(self, upload_id: str, blob_id: str) -> None:
        """Drop the assembled raw bytes (verification failed, or a compressed copy replaced them)."""

    @abc.abstractmethod
    def staging(self, blob_id: str, codec: Codec, *, attempt: int = 0) -> AbstractContextManager[IO[bytes]]:
        """A writable stream for a stored blob; it becomes visible only if the block exits without error.

        Each finalize ``attempt`` stages on its own (a file per attempt on disk, a multipart upload
        per attempt on S3): two attempts never write into or truncate each other's output.
        """

    # --- stored blobs ------------------------------------------------------------------------
    @abc.abstractmethod
    def write_sidecar(self, blob_id: str, document: dict[str, Any], *, attempt: int = 0) -> None:
        """Write the JSON sidecar atomically; ``attempt`` keeps two attempts' temporary files apart."""

    @abc.abstractmethod
    def read_sidecar(self, blob_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stored_size(self, blob_id: str, codec: Codec) -> int | None:
        """Bytes of the stored blob, None if it does not exist."""

    def has_blob(self, blob_id: str, codec: Codec, size: int) -> bool:
        """The stored blob is there with exactly ``size`` bytes (what a deduplicated upload may point at)."""
        return self.stored_size(blob_id, codec) == size

    @abc.abstractmethod
    def open_blob(
        self, blob_id: str, codec: Codec, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[IO[bytes]]:
        """Read a stored blob's stored bytes from ``start`` (``length`` bytes, or to the end)."""

    @abc.abstractmethod
    def delete(self, blob_id: str) -> None:
        """Remove a stored blob in every codec and its sidecar (admin delete). Idempotent."""

    @abc.abstractmethod
    def list_stored(self) -> Iterator[StoredObject]:
        """Every object of the stored-blob area (blobs and sidecars), for backups."""

    @abc.abstractmethod
    def read_stored(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """Open one object named by ``list_stored`` (backups)."""

    @abc.abstractmethod
    def write_stored(self, name: str, data: IO[bytes]) -> None:
        """Write one object named by ``list_stored`` (restores)."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise ``StoreUnavailable`` if the store cannot be reached now (health checks)."""

    @staticmethod
    def blob_name(blob_id: str, codec: Codec) -> str:
        """``ab/<blob_id>[.zst|.gz]``: the name of a stored blob inside the store area."""
        return f"{checked(blob_id)[:2]}/{blob_id}{SUFFIX[codec]}"

    @staticmethod
    def sidecar_name(blob_id: str) -> str:
        return f"{checked(blob_id)[:2]}/{blob_id}.json"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location})"
