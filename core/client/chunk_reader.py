"""Reading a bag's chunks for sending: one read per byte, hashed while the read left it in the CPU's cache.

Two costs of the obvious ``os.pread(fd, chunk_size, offset)`` then ``hash(data)``, measured on the
robot client (BENCHMARKS.md, issue 14 item 1):

- by the time a whole 8 MiB chunk has been read, most of it has left the cache, so the sha256 and
  CRC-32C passes that follow read it from memory again: ~0.2 CPU s/GiB more than hashing each
  ``READ_PART`` right after reading it;
- a new buffer per chunk is zero-filled (a ``bytearray``) or page-faulted in (``bytes``) before the
  read overwrites it: ~0.1 CPU s/GiB, which reusing sent chunks' buffers saves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from core.checksums import Hasher

READ_PART = 1 << 20  # bytes read, then hashed, at a time: they are still in the CPU's cache


class ChunkBuffers:
    """Chunk-sized buffers lent for reading one chunk and given back once that chunk was sent.

    A buffer is never lent twice at once, so a chunk still being sent (or retried) keeps its bytes.
    Buffers are created on demand, so there are at most as many as chunks held at once: one per
    sending thread, plus the one being read.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lent: set[int] = set()  # ids of the buffers lent out
        self._lock = threading.Lock()

    def lend(self, length: int) -> memoryview:
        """A buffer's first ``length`` bytes (its old contents: the caller overwrites them)."""
        if length > self.size:
            msg = f"a chunk of {length} bytes does not fit buffers of {self.size}"
            raise ValueError(msg)
        with self._lock:
            buffer = self._free.pop() if self._free else bytearray(self.size)
            self._lent.add(id(buffer))
        return memoryview(buffer)[:length]

    def give_back(self, lent: memoryview) -> None:
        """``lent`` may be overwritten from now on: its chunk was sent, or will not be."""
        buffer = lent.obj
        with self._lock:
            if not isinstance(buffer, bytearray) or id(buffer) not in self._lent:
                # Twice would let two chunks share one buffer: the second would overwrite the first's bytes.
                msg = "give_back() takes a view this pool lent and that was not given back yet"
                raise ValueError(msg)
            self._lent.remove(id(buffer))
            self._free.append(buffer)

    def __len__(self) -> int:
        """How many buffers are free now."""
        with self._lock:
            return len(self._free)


def read_hashed(fd: int, into: memoryview, offset: int, hashers: Iterable[Hasher]) -> int:
    """Fill ``into`` from ``fd`` at ``offset``, ``READ_PART`` at a time, feeding each part to ``hashers``.

    Returns the bytes read: fewer than ``len(into)`` only at the end of the file; the hashers were
    fed exactly those.
    """
    hashers = tuple(hashers)
    done = 0
    while done < len(into):
        part = into[done : done + READ_PART]
        read = os.preadv(fd, [part], offset + done)
        if read == 0:  # the end of the file
            break
        for hasher in hashers:
            hasher.update(part[:read])
        done += read
    return done
