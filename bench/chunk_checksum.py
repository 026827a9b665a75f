"""Robot client CPU per GiB: chunks checked by CRC-32C (as shipped) vs by sha256, against tuspy, in one run.

``python -m bench chunk_checksum [-- --size 1GiB --rounds 3]``. The real client
(``python -m core.network_manager upload``, one stream, 8 MiB chunks) uploads the same file
(new first bytes every time, so nothing is deduplicated) to two gunicorn servers in turn: the
server as shipped, which lists ``chunk-crc32c``, and ``bench/baseline_sha256_chunks.py``, the
same server without it, so the client sends ``X-Chunk-SHA256``. tuspy (no checksum at all) to the
project's ``/files/`` gives the floor of a Python client sending over this loopback in the same
run. Each client runs under ``/usr/bin/time`` (its own user + system CPU, start-up included).
Medians of interleaved rounds; MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench._measure import run_timed
from bench.peer_tus import CHUNK, TUS_PATH, make_unique, write_file
from bench.server_throughput import gunicorn
from core.config import parse_size
from core.protocol import server_root
from tests.helpers.processes import PYTHON, REPO_ROOT

SERVERS = {
    "real client, X-Chunk-CRC32C (server as shipped)": "upload_server:app",
    "real client, X-Chunk-SHA256 (server without chunk-crc32c)": "bench.baseline_sha256_chunks:app",
}
TUSPY = "tuspy to /files/, no checksum (floor)"


def client_argv(name: str, url: str, path: Path, state: Path) -> list[str]:
    if name == TUSPY:
        tus_url = server_root(url) + TUS_PATH
        return [PYTHON, "-m", "bench.peer_tus", "--client", "tuspy", tus_url, str(path), "1", "sent"]
    return [PYTHON, "-m", "core.network_manager", "--state-dir", str(state), "upload", str(path), "--url", url,
            "--chunk-size", str(CHUNK), "--chunk-parallelism", "1", "--no-progress"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = parse_size("--size", args.size)
    gib = size / 2**30
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}; file {size / 2**20:.0f} MiB, {args.rounds} round(s)")
    cpu: dict[str, list[float]] = {name: [] for name in (*SERVERS, TUSPY)}
    with tempfile.TemporaryDirectory(prefix="chunk-checksum-", dir=out) as tmp, ExitStack() as servers:
        work = Path(tmp)
        path = work / "bag.bin"
        write_file(path, size)
        urls = {name: servers.enter_context(gunicorn(app, work / f"store-{i}", work))[0]
                for i, (name, app) in enumerate(SERVERS.items())}  # fmt: skip
        urls[TUSPY] = urls[next(iter(SERVERS))]
        for round_ in range(args.rounds):
            for i, (name, url) in enumerate(urls.items()):
                make_unique(path)
                measured = run_timed(client_argv(name, url, path, work / f"state-{round_}-{i}"))
                cpu[name].append(measured.cpu / gib)
    floor = statistics.median(cpu[TUSPY])
    print("| client | CPU s/GiB | vs tuspy |")
    print("|---|---|---|")
    for name, values in cpu.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / floor:.2f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
