"""Shared by the benchmarks: run a client as a subprocess under GNU ``time`` for its own CPU and peak RSS.

``ru_maxrss`` as a parent sees it through ``wait4`` is not the child's own peak: a
forked child starts with the parent's resident pages, and that high-water mark
survives ``exec``, so a benchmark process holding a 64 MiB buffer reported 102 MiB
for a 42 MiB client. ``/usr/bin/time`` is a small process whose own child is the
client, so its ``%M`` is the client's peak alone (the same as the client's VmHWM).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.processes import REPO_ROOT

GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu: float  # user + system seconds of the client alone
    peak_rss: int  # bytes
    output: str


def run_timed(argv: Sequence[str], *, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None) -> Measured:
    """Run ``argv`` to completion under ``/usr/bin/time``; raises with its output if it fails."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as report:
        command = [GNU_TIME, "-o", report.name, "-f", "%M %U %S", *argv]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            msg = f"{argv[0]} … exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            raise RuntimeError(msg)
        # The last line: GNU time may print "Command exited with non-zero status" above it.
        peak_kib, user, system = report.read().split("\n")[-2].split()
    return Measured(seconds, float(user) + float(system), int(peak_kib) * 1024, proc.stdout)
