"""Bytes on local disk: part files being uploaded, stored files with JSON sidecars, chunk locks.

The default store, and the only one that builds filesystem paths. Layout under
the storage root::

    parts/<upload_id>.part          chunks land at their offsets, fsynced before ack
    locks/<upload_id>/<index>.lock  flock per chunk; the kernel drops it when a process dies
    staging/<blob_id>.<attempt>.tmp compressed output being written, one file per finalize attempt
    store/<id[:2]>/<blob_id>[.zst|.gz] and <blob_id>.json (sidecar)

Every new directory, created file and rename is followed by an fsync of the
parent directory: without it a power loss may forget the entry even though the
file's bytes were synced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from core.checksums import READ_SIZE
from core.protocol import Codec
from core.server.blobs.base import BlobStore, PartMissing, StoredObject, checked, is_valid_id, no_fence

_COPY_SIZE = 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir_durably(path: Path) -> None:
    """``mkdir -p`` whose new entries survive a power loss: each created level's parent is fsynced."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            directory.mkdir()
        fsync_dir(directory.parent)


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


class LocalBlobStore(BlobStore):
    """Local-disk storage of part files and stored files under one root."""

    kind = "local"
    supports_pieces = True
    exclusive_chunk_lock = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.local_root = root
        self.location = str(root)
        self.parts = root / "parts"
        self.locks = root / "locks"
        self.staging_dir = root / "staging"
        self.store = root / "store"
        for directory in (self.parts, self.locks, self.staging_dir, self.store):
            make_dir_durably(directory)

    # --- part files -----------------------------------------------------------
    def part_path(self, upload_id: str) -> Path:
        return self.parts / f"{checked(upload_id)}.part"

    def create_part(self, upload_id: str, size: int, chunk_size: int = 0, *, size_known: bool = True) -> None:
        """A sparse part file of the final size, so chunks can land at any offset in any order.

        Of unknown size: an empty file, which the bytes extend as they arrive in order (tus);
        when every byte is there, the file has exactly the declared size.
        """
        fd = os.open(self.part_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.ftruncate(fd, size if size_known else 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.parts)

    @contextlib.contextmanager
    def open_part(self, upload_id: str) -> Iterator[PartFile]:
        # No O_CREAT: a part removed by abort or the sweep must not come back.
        try:
            fd = os.open(self.part_path(upload_id), os.O_WRONLY)
        except FileNotFoundError as err:
            raise PartMissing(upload_id, "its part file does not exist") from err
        try:
            yield PartFile(fd)
        finally:
            os.close(fd)

    def write_chunk(self, upload_id: str, index: int, offset: int, data: IO[bytes], length: int) -> None:
        with self.open_part(upload_id) as part:
            _copy_into(part, data, offset, length, f"chunk {index}")
            # fsync before ack: an acknowledged chunk must survive a crash or power loss.
            part.sync()

    def write_piece(self, upload_id: str, offset: int, data: IO[bytes], length: int) -> None:
        """Pieces land at their offsets in the part file like chunks do; the chunk is checked on disk later."""
        with self.open_part(upload_id) as part:
            _copy_into(part, data, offset, length, f"a piece at offset {offset}")
            part.sync()

    def read_part(self, upload_id: str, offset: int, length: int, piece: int = _COPY_SIZE) -> Iterator[bytes]:
        try:
            fd = os.open(self.part_path(upload_id), os.O_RDONLY)
        except FileNotFoundError as err:
            raise PartMissing(upload_id, "its part file does not exist") from err
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
        shutil.rmtree(self.locks / checked(upload_id), ignore_errors=True)

    @contextlib.contextmanager
    def chunk_lock(self, upload_id: str, index: int) -> Iterator[None]:
        """Exclusive per-chunk lock across threads and processes (flock is per open file, released on death)."""
        directory = self.locks / checked(upload_id)
        directory.mkdir(exist_ok=True)  # transient: not fsynced, a lost lock directory is recreated
        fd = os.open(directory / f"{int(index)}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def part_ages(self, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        ages = {}
        for path in self.parts.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if is_valid_id(path.stem):
                    ages[path.stem] = now - path.stat().st_mtime
        return ages

    def remove_stale_staging(self, older_than: float) -> int:
        cutoff, removed = time.time() - older_than, 0
        for path in self.staging_dir.glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    # --- finalize ---------------------------------------------------------------
    def assemble(self, upload_id: str, blob_id: str, *, chunks: int, fence: Callable[[], None] = no_fence) -> bool:
        """Chunks already sit at their offsets: nothing to do but find the bytes (so nothing to fence)."""
        if self.part_path(upload_id).exists():
            return True
        if self.blob_path(blob_id, Codec.NONE).exists():
            return False  # a crashed attempt moved the verified part into the store: it stays raw
        raise PartMissing(upload_id, "neither its part file nor a stored copy exists")

    @contextlib.contextmanager
    def open_assembled(self, upload_id: str, blob_id: str, length: int | None = None) -> Iterator[IO[bytes]]:
        """The part file, or the raw stored copy another attempt may have renamed it into at any moment."""
        try:
            fh = self.part_path(upload_id).open("rb")
        except FileNotFoundError:
            try:
                fh = self.blob_path(blob_id, Codec.NONE).open("rb")
            except FileNotFoundError as err:
                raise PartMissing(upload_id, "its part file disappeared") from err
        with fh:
            yield fh

    def keep_assembled(self, upload_id: str, blob_id: str) -> None:
        if self.part_path(upload_id).exists() or not self.blob_path(blob_id, Codec.NONE).exists():
            self.store_part(upload_id, blob_id)

    def discard_assembled(self, upload_id: str, blob_id: str) -> None:
        self.part_path(upload_id).unlink(missing_ok=True)
        self.blob_path(blob_id, Codec.NONE).unlink(missing_ok=True)

    def store_part(self, upload_id: str, blob_id: str) -> Path:
        """Move a verified part file into the store as is: a rename, no copy.

        Two finalize attempts of one upload may both get here (the first one's lease ran out while
        it worked); the rename is atomic, so whichever comes second finds the same bytes stored.
        """
        target = self.blob_path(blob_id, Codec.NONE)
        make_dir_durably(target.parent)
        try:
            os.replace(self.part_path(upload_id), target)
        except FileNotFoundError as err:
            if not target.exists():
                raise PartMissing(upload_id, "its part file disappeared before it was stored") from err
        fsync_dir(target.parent)
        fsync_dir(self.parts)
        return target

    @contextlib.contextmanager
    def staging(self, blob_id: str, codec: Codec, *, attempt: int = 0) -> Iterator[IO[bytes]]:
        """A file of the ``attempt``'s own, renamed into the store atomically only if the block succeeds."""
        temp = self.staging_path(blob_id, attempt)
        target = self.blob_path(blob_id, codec)
        try:
            with temp.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            make_dir_durably(target.parent)
            os.replace(temp, target)
            fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)

    def staging_path(self, blob_id: str, attempt: int) -> Path:
        """The staging file of one finalize attempt: two attempts never write into (or truncate) the same file."""
        return self.staging_dir / f"{checked(blob_id)}.{int(attempt)}.tmp"

    # --- stored files ---------------------------------------------------------
    def blob_path(self, blob_id: str, codec: Codec) -> Path:
        return self.store / self.blob_name(blob_id, codec)

    def sidecar_path(self, blob_id: str) -> Path:
        return self.store / self.sidecar_name(blob_id)

    def write_sidecar(self, blob_id: str, document: dict[str, Any], *, attempt: int = 0) -> None:
        """Written atomically, through a temporary file of the finalize ``attempt``'s own."""
        path = self.sidecar_path(blob_id)
        make_dir_durably(path.parent)
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

    def stored_size(self, blob_id: str, codec: Codec) -> int | None:
        try:
            return self.blob_path(blob_id, codec).stat().st_size
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def open_blob(self, blob_id: str, codec: Codec, start: int = 0, length: int | None = None) -> Iterator[IO[bytes]]:
        with self.blob_path(blob_id, codec).open("rb") as fh:
            fh.seek(start)
            yield fh if length is None else _Limited(fh, length)  # type: ignore[misc]

    def delete(self, blob_id: str) -> None:
        directory = self.blob_path(blob_id, Codec.NONE).parent
        for codec in Codec:
            self.blob_path(blob_id, codec).unlink(missing_ok=True)
        self.sidecar_path(blob_id).unlink(missing_ok=True)
        if directory.exists():
            fsync_dir(directory)

    def list_stored(self) -> Iterator[StoredObject]:
        for path in sorted(p for p in self.store.rglob("*") if p.is_file()):
            yield StoredObject(path.relative_to(self.store).as_posix(), path.stat().st_size)

    @contextlib.contextmanager
    def read_stored(self, name: str) -> Iterator[IO[bytes]]:
        with self._stored_path(name).open("rb") as fh:
            yield fh

    def write_stored(self, name: str, data: IO[bytes]) -> None:
        target = self._stored_path(name)
        make_dir_durably(target.parent)
        temp = self.staging_dir / f"{target.name}.tmp"
        with temp.open("wb") as out:
            shutil.copyfileobj(data, out, READ_SIZE)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
        fsync_dir(target.parent)

    def _stored_path(self, name: str) -> Path:
        path = (self.store / name).resolve()
        if not path.is_relative_to(self.store.resolve()):
            msg = f"{name!r} is outside the store"
            raise ValueError(msg)
        return path


def _copy_into(part: PartFile, data: IO[bytes], offset: int, length: int, what: str) -> None:
    remaining = length
    while remaining:
        piece = data.read(min(_COPY_SIZE, remaining))
        if not piece:
            msg = f"{what}: source ended {remaining} bytes early"
            raise ValueError(msg)
        part.write_at(piece, offset)
        offset += len(piece)
        remaining -= len(piece)


class _Limited:
    """At most ``length`` bytes of a file object (a byte range of a stored blob)."""

    def __init__(self, fh: IO[bytes], length: int) -> None:
        self._fh = fh
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(want)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()
