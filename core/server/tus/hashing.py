"""The whole-file sha256 of tus uploads, computed as their offsets advance, kept in this process.

CPython's hashlib cannot export a hash's state, and the ``rehash`` package that pickles OpenSSL
hash state refuses OpenSSL 3 (``NotImplementedError`` on this Debian 12 / Python 3.11), so the
state stays in the process that received the bytes, keyed by (upload id, offset): a PATCH
continues the hash only if this process holds it at exactly the PATCH's offset. When another
worker or host received some bytes, or the process restarted, the state is missing, the upload
completes without ``received_sha256`` and finalize re-reads the stored bytes as for the native
protocol. Stores without a lock across hosts (S3) never use it (``BlobStore.exclusive_chunk_lock``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

# Uploads in flight in one worker process; the least recently advanced beyond this fall back to a re-read.
MAX_TRACKED = 1024


class StreamHashes:
    """upload id → (offset, sha256 of bytes [0, offset)), bounded, thread-safe."""

    def __init__(self, limit: int = MAX_TRACKED) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def resume(self, upload_id: str, offset: int) -> Any | None:
        """A copy of the hash of bytes [0, offset) (a new hash at offset 0), None if this process lacks it."""
        if offset == 0:
            return hashlib.sha256()
        with self._lock:
            state = self._states.get(upload_id)
            if state is None or state[0] != offset:
                return None
            return state[1].copy()

    def save(self, upload_id: str, offset: int, digest: Any) -> None:
        with self._lock:
            self._states[upload_id] = (offset, digest)
            self._states.move_to_end(upload_id)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        with self._lock:
            self._states.pop(upload_id, None)
