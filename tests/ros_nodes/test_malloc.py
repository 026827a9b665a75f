"""The recorder's malloc settings: ~1 MiB buffers come from the heap, not from a fresh mmap each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.processes import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and mallinfo2 are glibc's")

# Run in a fresh interpreter: the thresholds are process-wide and cannot be undone.
PROBE = """
import ctypes, sys
from ros_nodes.core.malloc import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblks
block = libc.malloc(2 * 1024 * 1024)  # a message-sized buffer
print(tuned, libc.mallinfo2().hblks - before)
"""


def probe(mode: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_message_sized_buffers_stay_on_the_heap_once_tuned() -> None:
    assert probe("default") == "None 1"  # glibc's default: a 2 MiB block is a separate mapping
    assert probe("tuned") == "True 0"


def test_the_operators_own_malloc_settings_win() -> None:
    assert probe("tuned", MALLOC_MMAP_THRESHOLD_="131072") == "False 1"
