"""Helpers of the upload client tests: fake time, test files, event collection, server-copy checksums."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from core.checksums import ChunkChecksum
from core.client.events import EventKind, UploadEvent
from core.client.transfer import ServerClient
from core.protocol import AUTH_SCHEME, FEATURE_FINALIZE_SHA256, HEADER_AUTHORIZATION, download_url


class FakeClock:
    """A clock that only moves when the code under test sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_file(path: Path, size: int, *, compressible: bool = False) -> Path:
    """Write ``size`` bytes in 1 MiB pieces: random, or a repetitive text that zstd shrinks."""
    piece = 1 << 20
    with path.open("wb") as fh:
        if compressible and size:
            # A unique first line, so two compressible test files are never deduplicated by the server.
            fh.write(os.urandom(8).hex().encode()[:size])
            size -= min(size, 16)
        remaining = size
        while remaining > 0:
            n = min(piece, remaining)
            fh.write((b"topic=/imu stamp=12345 data=0.0;" * (n // 32 + 1))[:n] if compressible else os.urandom(n))
            remaining -= n
    return path


def server_sha256(upload_url: str, upload_id: str, api_key: str | None = None) -> str:
    """sha256 of the server's copy as downloaded (decompressed) through GET /uploads/<id>/file."""
    headers = {HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {api_key}"} if api_key else {}
    digest = hashlib.sha256()
    with requests.get(download_url(upload_url, upload_id), stream=True, timeout=30, headers=headers) as response:
        response.raise_for_status()
        for piece in response.iter_content(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def local_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


class EventLog:
    """Collects a manager's events (delivered from its worker threads) for assertions."""

    def __init__(self) -> None:
        self.events: list[UploadEvent] = []
        self.changed = threading.Condition()
        self.hooks: list[Callable[[UploadEvent], None]] = []

    def __call__(self, event: UploadEvent) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()
        for hook in list(self.hooks):
            hook(event)

    def of(self, kind: EventKind) -> list[UploadEvent]:
        with self.changed:
            return [e for e in self.events if e.kind is kind]

    def wait_for(self, predicate: Callable[[UploadEvent], bool], timeout: float = 30.0) -> UploadEvent:
        """Block until an event matches ``predicate``; returns it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.changed:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"no matching upload event within {timeout}s; last: {self.events[-3:]}"
                    raise TimeoutError(msg)
                self.changed.wait(remaining)


def init_reply(
    upload_id: str, chunk_size: int, chunks: int = 3, features: tuple[str, ...] = (FEATURE_FINALIZE_SHA256,)
) -> dict[str, object]:
    """A server's reply to a new upload's init (by default one that advertises ``finalize-sha256`` only)."""
    return {
        "success": True,
        "upload_id": upload_id,
        "chunk_size": chunk_size,
        "chunks": chunks,
        "received": [],
        "state": "uploading",
        "features": list(features),
    }


def one_chunk_upload(client: ServerClient, chunk: bytes, filename: str) -> str:
    """A new upload whose only chunk is ``chunk``; returns its id."""
    reply = client.init({"filename": filename, "filesize": len(chunk), "chunk_size": len(chunk)}, timeout=30)
    return str(reply["upload_id"])


def sent_pieces(client: ServerClient, upload_id: str, chunk: bytes, *, send_timeout: float = 10.0) -> list[int]:
    """PUT ``chunk`` as chunk 0 of ``upload_id``; the sizes of the pieces handed to the socket, in order."""
    pieces: list[int] = []
    client.put_chunk(
        upload_id, 0, chunk, connect_timeout=send_timeout, read_timeout=60,
        on_piece=lambda n: pieces.append(n) if n else None,
        chunk_checksum=ChunkChecksum.of(client.chunk_algorithm, (chunk,)),
    )  # fmt: skip
    return pieces
