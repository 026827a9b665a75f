"""Bytes on local disk: part files being uploaded, stored files with JSON sidecars, chunk locks.

This is the only module that builds filesystem paths, and it builds them only
from server-generated ids (32 lowercase hex digits), never from client
filenames. Layout under the storage root::

    parts/<upload_id>.part          chunks land at their offsets, fsynced before ack
    locks/<upload_id>/<index>.lock  flock per chunk; the kernel drops it when a process dies
    staging/<blob_id>.tmp           compressed output being written
    store/<id[:2]>/<blob_id>[.zst|.gz] and <blob_id>.json (sidecar)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from core.protocol import Codec

_ID = re.compile(r"[0-9a-f]{32}")
_SUFFIX = {Codec.NONE: "", Codec.ZSTD: ".zst", Codec.GZIP: ".gz"}


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _checked(blob_or_upload_id: str) -> str:
    if not is_valid_id(blob_or_upload_id):
        msg = f"not a server-generated id: {blob_or_upload_id!r}"
        raise ValueError(msg)
    return blob_or_upload_id


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartFile:
    """An open part file: positional writes, then one sync before the chunk is acknowledged."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def sync(self) -> None:
        os.fdatasync(self.fd)


class BlobStore:
    """Local-disk storage of part files and stored files under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts = root / "parts"
        self.locks = root / "locks"
        self.staging_dir = root / "staging"
        self.store = root / "store"
        for directory in (self.parts, self.locks, self.staging_dir, self.store):
            directory.mkdir(parents=True, exist_ok=True)

    # --- part files -----------------------------------------------------------
    def part_path(self, upload_id: str) -> Path:
        return self.parts / f"{_checked(upload_id)}.part"

    def create_part(self, upload_id: str, size: int) -> None:
        """A sparse part file of the final size, so chunks can land at any offset in any order."""
        fd = os.open(self.part_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.parts)

    @contextlib.contextmanager
    def open_part(self, upload_id: str) -> Iterator[PartFile]:
        # No O_CREAT: a part removed by abort or the sweep must not come back.
        fd = os.open(self.part_path(upload_id), os.O_WRONLY)
        try:
            yield PartFile(fd)
        finally:
            os.close(fd)

    def remove_part(self, upload_id: str) -> None:
        self.part_path(upload_id).unlink(missing_ok=True)
        shutil.rmtree(self.locks / _checked(upload_id), ignore_errors=True)

    @contextlib.contextmanager
    def chunk_lock(self, upload_id: str, index: int) -> Iterator[None]:
        """Exclusive per-chunk lock across threads and processes (flock is per open file, released on death)."""
        directory = self.locks / _checked(upload_id)
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / f"{int(index)}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- stored files ---------------------------------------------------------
    def blob_path(self, blob_id: str, codec: Codec) -> Path:
        return self.store / _checked(blob_id)[:2] / f"{blob_id}{_SUFFIX[codec]}"

    def sidecar_path(self, blob_id: str) -> Path:
        return self.store / _checked(blob_id)[:2] / f"{blob_id}.json"

    def store_part(self, upload_id: str, blob_id: str) -> Path:
        """Move a verified part file into the store as is: a rename, no copy."""
        target = self.blob_path(blob_id, Codec.NONE)
        target.parent.mkdir(exist_ok=True)
        os.replace(self.part_path(upload_id), target)
        fsync_dir(target.parent)
        fsync_dir(self.parts)
        return target

    @contextlib.contextmanager
    def staging(self, blob_id: str, codec: Codec) -> Iterator[IO[bytes]]:
        """A file to write a stored blob into; renamed into the store atomically only if the block succeeds."""
        temp = self.staging_dir / f"{_checked(blob_id)}.tmp"
        target = self.blob_path(blob_id, codec)
        try:
            with temp.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            target.parent.mkdir(exist_ok=True)
            os.replace(temp, target)
            fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)

    def write_sidecar(self, blob_id: str, document: dict[str, Any]) -> None:
        path = self.sidecar_path(blob_id)
        path.parent.mkdir(exist_ok=True)
        temp = self.staging_dir / f"{blob_id}.json.tmp"
        with temp.open("w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)

    def read_sidecar(self, blob_id: str) -> dict[str, Any]:
        with self.sidecar_path(blob_id).open(encoding="utf-8") as fh:
            document: dict[str, Any] = json.load(fh)
        return document

    def delete_blob(self, blob_id: str) -> int:
        """Remove a stored file (any codec) and its sidecar; the bytes freed (0 when it was already gone)."""
        freed = 0
        sidecar = self.sidecar_path(blob_id)
        for path in (*(self.blob_path(blob_id, codec) for codec in Codec), sidecar):
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        if sidecar.parent.is_dir():
            fsync_dir(sidecar.parent)  # the unlink is durable before the caller reports the file gone
        return freed
