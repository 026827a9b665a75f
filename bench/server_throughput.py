"""Upload server throughput vs a minimal chunk writer (``bench/baseline_server.py``), both under the same gunicorn.

Run: ``.venv/bin/python -m bench server -- --size-mib 1024 [--chunk-checksum sha256]`` (a few
minutes). For 1 and 4 parallel chunk streams it uploads the same file over loopback to each server
in turn and prints MB/s (MB = 10^6 B), the ratio ours/baseline, and the servers' CPU seconds per
GiB (master + workers, from /proc). Both verify each chunk's checksum (``X-Chunk-CRC32C``, as the
robot client sends it, or ``X-Chunk-SHA256``) and fsync before acknowledging; ours also records
state, locks the chunk and, after the last chunk, re-hashes the whole file in the background
(shown as "to verified").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from core.checksums import ChunkChecksum
from core.protocol import ChunkAlgorithm, MiB, chunk_url, finalize_url, init_url, upload_status_url
from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, free_port, port_open, wait_until

MB = 1e6
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
APPS = {"baseline": "bench.baseline_server:app", "ours": "upload_server:app"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (gunicorn master + workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]
    total = 0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def wait_idle(pid: int, timeout: float = 60.0) -> None:
    """Wait until every worker has finished importing the app: its import CPU is not upload work."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


@contextmanager
def gunicorn(
    app: str, storage: Path, log_dir: Path, *, tree: Path = REPO_ROOT, **env: str
) -> Iterator[tuple[str, ManagedProcess]]:
    """``app`` under ``gunicorn.conf.py -w 4`` on a free port; ``tree``: another checkout (before/after runs)."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-c",
        str(tree / "gunicorn.conf.py"),
        "-w",
        "4",
        "-b",
        f"127.0.0.1:{port}",
        app,
    ]
    env = {"UPLOAD_DIR": str(storage), "AUTH_ENABLED": "0", "RATELIMIT_ENABLED": "0", "LOG_LEVEL": "WARNING", **env}
    log_path = log_dir / f"{app.split(':')[0]}-{port}.log"
    process = ManagedProcess(argv, log_path=log_path, env={"PYTHONPATH": str(tree), **env}, cwd=tree).start()
    try:
        wait_until(lambda: port_open(port), 30, 0.1, f"{app} on port {port}")
        wait_idle(process.pid)
        yield f"http://127.0.0.1:{port}/upload", process
    finally:
        process.stop()


@dataclass
class Result:
    seconds: float
    cpu: float  # server CPU seconds until the last chunk was acknowledged
    verified_seconds: float | None = None
    verified_cpu: float | None = None  # ... until the upload was verified and stored


class Payload:
    """A file of ``size`` bytes built from a few distinct random chunks; the first chunk differs per run (no dedup)."""

    def __init__(self, size: int, chunk_size: int, algorithm: ChunkAlgorithm) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.algorithm = algorithm
        self.pool = [os.urandom(chunk_size) for _ in range(8)]
        self.checksums = [ChunkChecksum.of(algorithm, (c,)) for c in self.pool]
        self.count = size // chunk_size
        self.first = self.pool[0]

    def new_run(self) -> str:
        """Make the file unique for this run; returns its sha256."""
        self.first = os.urandom(self.chunk_size)
        whole = hashlib.sha256(self.first)
        for index in range(1, self.count):
            whole.update(self.pool[index % 8])
        return whole.hexdigest()

    def chunk(self, index: int) -> tuple[bytes, ChunkChecksum]:
        if index == 0:
            return self.first, ChunkChecksum.of(self.algorithm, (self.first,))
        return self.pool[index % 8], self.checksums[index % 8]


def upload(url: str, payload: Payload, streams: int, cpu: Callable[[], float], *, finalize: bool) -> Result:
    sha256 = payload.new_run()
    started = time.perf_counter()
    body = {"filename": "bench.bag", "filesize": payload.size, "chunk_size": payload.chunk_size, "sha256": sha256}
    reply = requests.post(init_url(url), json=body, timeout=30)
    reply.raise_for_status()
    upload_id = reply.json()["upload_id"]
    indices = iter(range(payload.count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def stream() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                data, checksum = payload.chunk(index)
                try:
                    headers = {checksum.header: checksum.hexdigest}
                    response = session.put(chunk_url(url, upload_id, index), data=data, headers=headers, timeout=60)
                    response.raise_for_status()
                except requests.RequestException as err:
                    errors.append(err)
                    return

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    result = Result(time.perf_counter() - started, cpu())
    if not finalize:
        return result
    requests.post(finalize_url(url, upload_id), timeout=30).raise_for_status()
    status_url = upload_status_url(url, upload_id)
    wait_until(lambda: requests.get(status_url, timeout=30).json()["state"] != "finalizing", 300, 0.05, "finalize")
    state = requests.get(status_url, timeout=30).json()
    if not state["verified"]:
        msg = f"upload not verified: {state}"
        raise RuntimeError(msg)
    result.verified_seconds, result.verified_cpu = time.perf_counter() - started, cpu()
    return result


def measure(app: str, payload: Payload, streams: int, work: Path, baseline_read: int) -> Result:
    with gunicorn(APPS[app], work / app, work, BASELINE_READ_SIZE=str(baseline_read)) as (url, process):
        before = cpu_seconds(process.pid)
        return upload(url, payload, streams, lambda: cpu_seconds(process.pid) - before, finalize=app == "ours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and stream count (median shown)")
    parser.add_argument("--baseline-read-kib", type=int, default=64, help="the baseline's body read size")
    parser.add_argument("--chunk-checksum", choices=[a.value for a in ChunkAlgorithm], default="crc32c")
    args = parser.parse_args()

    payload = Payload(args.size_mib * MiB, args.chunk_mib * MiB, ChunkAlgorithm(args.chunk_checksum))
    gib = payload.size / 2**30
    print(f"load average before: {os.getloadavg()[0]:.2f}; file {payload.size / MB:.0f} MB in {payload.count} chunks;"
          f" baseline reads {args.baseline_read_kib} KiB pieces; chunks checked by {args.chunk_checksum}")  # fmt: skip
    print(f"{'streams':>7} {'baseline MB/s':>14} {'ours MB/s':>10} {'ratio':>6} {'to verified MB/s':>17}"
          f" {'CPU s/GiB base':>15} {'ours':>6} {'ours verified':>14}")  # fmt: skip
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="server-", dir=out) as tmp:
        work = Path(tmp)
        for streams in (int(s) for s in args.streams.split(",")):
            runs: dict[str, list[Result]] = {"baseline": [], "ours": []}
            for _ in range(args.repeat):  # alternate, so drift in machine load hits both alike
                for app in runs:
                    runs[app].append(measure(app, payload, streams, work, args.baseline_read_kib * 1024))
            base = statistics.median(payload.size / MB / r.seconds for r in runs["baseline"])
            ours = statistics.median(payload.size / MB / r.seconds for r in runs["ours"])
            verified = statistics.median(payload.size / MB / (r.verified_seconds or 1) for r in runs["ours"])
            cpu_base = statistics.median(r.cpu for r in runs["baseline"]) / gib
            cpu_ours = statistics.median(r.cpu for r in runs["ours"]) / gib
            cpu_verified = statistics.median(r.verified_cpu or 0 for r in runs["ours"]) / gib
            print(f"{streams:>7} {base:>14.0f} {ours:>10.0f} {ours / base:>6.2f} {verified:>17.0f}"
                  f" {cpu_base:>15.2f} {cpu_ours:>6.2f} {cpu_verified:>14.2f}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
