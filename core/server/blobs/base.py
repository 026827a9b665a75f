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
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
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


class BlobStore(abc.ABC):
    """Bytes of uploads in progress and of stored files; implementations: ``LocalBlobStore``, ``S3BlobStore``."""

    #: "local" or "s3", for logs, /health/detailed and backups.
    kind: str = ""
    #: A human-readable location (a directory or s3://bucket/prefix) for log lines and errors.
    location: str = ""

    # --- uploads in progress --------------------------------------------------------------
    @abc.abstractmethod
    def create_part(self, upload_id: str, size: int, chunk_size: int) -> None:
        """Prepare to receive the chunks of a ``size``-byte upload (chunks of ``chunk_size``, the last shorter)."""

    @abc.abstractmethod
    def write_chunk(self, upload_id: str, index: int, offset: int, data: IO[bytes], length: int) -> None:
        """Store ``length`` verified bytes read from ``data`` as chunk ``index``; durable when this returns.

        Raises ``PartMissing`` if the upload's part is gone (aborted, swept, lost).
        """

    @abc.abstractmethod
    def remove_part(self, upload_id: str) -> None:
        """Discard everything received for an upload in progress (abort, expiry, after storing). Idempotent."""

    @abc.abstractmethod
    def chunk_lock(self, upload_id: str, index: int) -> AbstractContextManager[None]:
        """Serialise writers of one chunk: held only while a verified chunk is written and recorded."""

    @abc.abstractmethod
    def parts_idle_since(self, before: float) -> Iterator[str]:
        """Ids of uploads with received data untouched since ``before`` (unix time), for the orphan sweep."""

    # --- finalize ----------------------------------------------------------------------------
    @abc.abstractmethod
    def assemble(self, upload_id: str, blob_id: str, *, chunks: int) -> bool:
        """Put the received chunks together as one file; True if it may still be compressed.

        False means a crashed earlier attempt already stored it raw as ``blob_id``.
        Raises ``PartMissing`` naming a chunk whose bytes are gone. Safe to repeat.
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
    def staging(self, blob_id: str, codec: Codec) -> AbstractContextManager[IO[bytes]]:
        """A writable stream for a stored blob; it becomes visible only if the block exits without error."""

    # --- stored blobs ------------------------------------------------------------------------
    @abc.abstractmethod
    def write_sidecar(self, blob_id: str, document: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def read_sidecar(self, blob_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def stored_size(self, blob_id: str, codec: Codec) -> int | None:
        """Bytes of the stored blob, None if it does not exist."""

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
