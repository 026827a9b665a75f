"""Bytes on local disk: part files being uploaded, stored files with JSON sidecars, chunk locks.

This is the only module that builds filesystem paths, and it builds them only
from server-generated ids (32 lowercase hex digits), never from client
filenames. Layout under the storage root::

    parts/<upload_id>.part          chunks land at their offsets, fsynced before ack
    locks/<upload_id>/<index>.lock  flock per chunk; the kernel drops it when a process dies
    staging/<blob_id>.<attempt>.tmp compressed output being written, one file per finalize attempt
    store/<id[:2]>/<blob_id>[.zst|.gz] and <blob_id>.json (sidecar)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
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

    def read_part(self, upload_id: str, offset: int, length: int, piece: int = 1 << 20) -> Iterator[bytes]:
        """The stored bytes [offset, offset + length) of a part file, in pieces (chunk pieces are checked on disk)."""
        fd = os.open(self.part_path(upload_id), os.O_RDONLY)
        try:
            end = offset + length
            while offset < end:
                data = os.pread(fd, min(piece, end - offset), offset)
                if not data:
                    return
                offset += len(data)
                yield data
        finally:
            os.close(fd)

    def remove_part(self, upload_id: str) -> None:
        self.part_path(upload_id).unlink(missing_ok=True)
        shutil.rmtree(self.locks / _checked(upload_id), ignore_errors=True)

    def part_ages(self) -> dict[str, float]:
        """upload_id → seconds since each part file was last written (for the orphan sweep)."""
        now = time.time()
        ages = {}
        for path in self.parts.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if is_valid_id(path.stem):
                    ages[path.stem] = now - path.stat().st_mtime
        return ages

    def remove_stale_staging(self, older_than: float) -> int:
        """Delete staging files untouched for ``older_than`` seconds: left by attempts that crashed or were fenced."""
        cutoff, removed = time.time() - older_than, 0
        for path in self.staging_dir.glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

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

    def has_blob(self, blob_id: str, codec: Codec, size: int) -> bool:
        """The stored file is there with exactly ``size`` bytes (what a deduplicated upload may point at)."""
        try:
            return self.blob_path(blob_id, codec).stat().st_size == size
        except FileNotFoundError:
            return False

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
    def staging(self, blob_id: str, codec: Codec, *, attempt: int = 0) -> Iterator[IO[bytes]]:
        """A file to write a stored blob into; renamed into the store atomically only if the block succeeds.

        One file per finalize ``attempt``: two attempts never write into (or truncate) the same file.
        """
        temp = self.staging_path(blob_id, attempt)
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

    def staging_path(self, blob_id: str, attempt: int) -> Path:
        return self.staging_dir / f"{_checked(blob_id)}.{int(attempt)}.tmp"

    def write_sidecar(self, blob_id: str, document: dict[str, Any], *, attempt: int = 0) -> None:
        """Write the JSON sidecar atomically, through a temporary file of the finalize ``attempt``'s own."""
        path = self.sidecar_path(blob_id)
        path.parent.mkdir(exist_ok=True)
        temp = self.staging_dir / f"{blob_id}.{int(attempt)}.json.tmp"
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
