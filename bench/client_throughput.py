"""Upload client vs. one ``curl`` per chunk: MB/s on loopback, plus the client's CPU seconds and peak RSS.

Both sides upload the same generated file to the same real gunicorn server
configuration (a fresh storage root each, so the server's deduplication cannot
short-cut the second run) with the same chunk size, and both wait until the
server reports the upload verified. The client runs as its CLI in a subprocess
under ``/usr/bin/time`` for its own CPU time and peak RSS (not ``wait4`` from this
process: that high-water mark starts at this process's own, see bench/_measure.py). It also times
the client's md5+sha256 pass over the file before init (the first of the two
reads of every bag) with the file in the page cache and evicted from it.

    .venv/bin/python -m bench.client_throughput [--size 2GiB] [--chunk-size 8MiB] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench._measure import run_timed
from core.checksums import file_digests
from core.config import parse_size
from core.protocol import (
    CHUNK_CONTENT_TYPE,
    HEADER_CHUNK_SHA256,
    MiB,
    chunk_count,
    chunk_url,
    finalize_url,
    init_url,
    upload_status_url,
)
from tests.helpers.processes import PYTHON
from tests.helpers.servers import GunicornServer

MB = 1_000_000
BLOCK = 64 * MiB


def generate(path: Path, size: int) -> None:
    """Incompressible bytes (a random block repeated), so the client does not ask for compression."""
    block = os.urandom(BLOCK)
    with path.open("wb") as fh:
        remaining = size
        while remaining > 0:
            fh.write(block[: min(BLOCK, remaining)])
            remaining -= min(BLOCK, remaining)


def wait_verified(upload_url: str, upload_id: str) -> None:
    while True:
        status = requests.get(upload_status_url(upload_url, upload_id), timeout=10).json()
        if status["state"] == "complete" and status.get("verified"):
            return
        if status["state"] in ("failed", "aborted"):
            sys.exit(f"baseline upload {upload_id} ended {status['state']}: {status.get('error')}")
        time.sleep(0.1)


def hash_pass_seconds(path: Path, *, cold: bool) -> float:
    """Seconds of the client's pre-init md5+sha256 pass; ``cold`` evicts the file from the page cache first."""
    if cold:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    start = time.perf_counter()
    file_digests(path)
    return time.perf_counter() - start


def run_client(path: Path, upload_url: str, chunk_size: int, parallelism: int, state: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, peak RSS bytes) of ``python -m core.network_manager upload``."""
    argv = [PYTHON, "-m", "core.network_manager", "--state-dir", str(state), "upload", str(path), "--url", upload_url,
            "--chunk-size", str(chunk_size), "--chunk-parallelism", str(parallelism), "--no-progress"]  # fmt: skip
    measured = run_timed(argv)
    return measured.seconds, measured.cpu, measured.peak_rss


def run_curl(path: Path, upload_url: str, chunk_size: int) -> float:
    """Seconds for init + one ``curl`` per chunk (with its sha256 header) + finalize + verified."""
    start = time.perf_counter()
    digests = file_digests(path)
    size = digests.size
    reply = requests.post(init_url(upload_url), timeout=10, json={
        "filename": path.name, "filesize": size, "chunks": chunk_count(size, chunk_size), "checksum": digests.md5,
        "sha256": digests.sha256, "chunk_size": chunk_size, "compression": False})  # fmt: skip
    reply.raise_for_status()
    upload_id = reply.json()["upload_id"]
    with path.open("rb") as fh:
        for index in range(chunk_count(size, chunk_size)):
            data = fh.read(chunk_size)
            headers = [
                f"Content-Type: {CHUNK_CONTENT_TYPE}",
                f"{HEADER_CHUNK_SHA256}: {hashlib.sha256(data).hexdigest()}",
            ]
            argv = [
                "curl",
                "-sf",
                "-X",
                "PUT",
                "--data-binary",
                "@-",
                "-o",
                "/dev/null",
                "-H",
                headers[0],
                "-H",
                headers[1],
            ]
            subprocess.run([*argv, chunk_url(upload_url, upload_id, index)], input=data, check=True)
    requests.post(finalize_url(upload_url, upload_id), timeout=10).raise_for_status()
    wait_verified(upload_url, upload_id)
    return time.perf_counter() - start


Result = tuple[float, float | None, int | None]  # seconds, client CPU seconds, client peak RSS bytes


def _median(results: list[Result]) -> Result:
    """The run of median duration (its CPU and RSS with it, so the three figures belong together)."""
    return sorted(results, key=lambda r: r[0])[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GiB", help="file size (default 2GiB)")
    parser.add_argument("--chunk-size", default="8MiB", help="chunk size for both sides (default 8MiB)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2: this machine has 2 cores)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    args = parser.parse_args()
    size, chunk_size = parse_size("--size", args.size), parse_size("--chunk-size", args.chunk_size)

    with tempfile.TemporaryDirectory(prefix="client-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        source = root / "bench.mcap"
        generate(source, size)
        small = root / "small.mcap"
        generate(small, min(size, 64 * MiB))
        runs: dict[str, list[Result]] = {}
        hashing = {"cold": hash_pass_seconds(source, cold=True), "warm": hash_pass_seconds(source, cold=False)}
        with GunicornServer(root / "srv-small" / "uploads", workers=args.workers) as server:
            # The same client on a small file: peak RSS must not grow with the file size.
            _elapsed, _cpu, small_rss = run_client(small, server.upload_url, chunk_size, 1, root / "s-small")
        senders = [("client", 1), ("client x2 chunks", 2), ("curl per chunk", 0)]
        for number in range(args.rounds):  # interleaved, rotating: load drift hits every sender alike
            for name, parallelism in senders[number % 3 :] + senders[: number % 3]:
                where = root / f"r{number}-{parallelism}"
                with GunicornServer(where / "uploads", workers=args.workers) as server:
                    if parallelism:
                        result = run_client(source, server.upload_url, chunk_size, parallelism, where / "state")
                    else:
                        result = (run_curl(source, server.upload_url, chunk_size), None, None)
                runs.setdefault(name, []).append(result)
                shutil.rmtree(where / "uploads")
    results = {name: _median(r) for name, r in runs.items()}

    baseline = size / results["curl per chunk"][0] / MB
    print(f"file {size / MiB:.0f} MiB, chunk {chunk_size / MiB:.0f} MiB, gunicorn -w {args.workers}, loopback")
    print(f"{'sender':18} {'MB/s':>8} {'ratio':>6} {'CPU s':>7} {'CPU s/GiB':>9} {'peak RSS MiB':>12}")
    for name, (elapsed, cpu, rss) in results.items():
        rate = size / elapsed / MB
        cpu_text = f"{cpu:7.1f} {cpu / (size / (1024 * MiB)):9.2f}" if cpu is not None else f"{'-':>7} {'-':>9}"
        rss_text = f"{rss / MiB:12.0f}" if rss is not None else f"{'-':>12}"
        print(f"{name:18} {rate:8.1f} {rate / baseline:6.2f} {cpu_text} {rss_text}")
    print(f"client peak RSS on a {min(size, 64 * MiB) / MiB:.0f} MiB file: {small_rss / MiB:.0f} MiB")
    client_seconds = results["client"][0]
    for cache, seconds in hashing.items():
        print(
            f"pre-init md5+sha256 pass, {cache} page cache: {seconds:.1f} s ({size / seconds / MB:.0f} MB/s), "
            f"{100 * seconds / client_seconds:.0f}% of the client's {client_seconds:.1f} s upload"
        )


if __name__ == "__main__":
    main()
