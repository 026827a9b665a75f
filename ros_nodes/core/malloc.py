"""glibc malloc settings for the recorder process, so ~1 MiB message buffers are reused instead of remapped.

Why: rosbags copies every message through a few ``BytesIO`` buffers of about the
message's size. glibc's default mmap threshold (128 KiB, raised dynamically as
mapped blocks are freed) and heap trimming then decide per process and per thread
arena whether each such buffer comes from ``mmap``/``munmap`` (and fresh, zeroed
pages) or from the heap: the same write loop ran at 0.6, 0.8, 1.3 or 1.9 GB/s
depending on which thread and which process it was (BENCHMARKS.md, Recorder).
Fixed thresholds above the largest buffer keep them on the heap, where they are
reused: 1.8-1.9 GB/s on every thread, for at most ``TRIM_THRESHOLD`` of freed
memory kept per arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from core.protocol import MiB

log = logging.getLogger(__name__)

# mallopt() parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Above a ~1 MiB MCAP chunk plus one ~1 MiB message, so neither is ever mmapped on its own.
MMAP_THRESHOLD = 4 * MiB
TRIM_THRESHOLD = 8 * MiB
# The operator's own settings (glibc reads them at process start) win over ours.
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where not glibc or the operator set them."""
    if any(os.environ.get(name) for name in ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds: mmap %d, trim %d bytes (tuned=%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, tuned)
    return tuned
