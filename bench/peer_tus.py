"""The project against a real peer (@tus/server + @tus/file-store, driven by tuspy and tus-js-client), and a baseline.

``python -m bench.peer_tus [--size 1GiB] [--rounds 3] [--short]`` (``--short``: 256 MiB, one round).

It installs @tus/server and @tus/file-store with npm into ``bench/out/tus-peer`` (not committed)
the first time, and uses tuspy from the venv (requirements-dev.txt). One file of ``--size`` bytes,
8 MiB blocks alternating compressible (a sensor-like random walk) and random, so it is half of
each and its first block tells the client to ask for compression; its first bytes change every
round, so no server can deduplicate. Every client runs as a subprocess under ``/usr/bin/time``
(its own CPU; bench/_measure.py), every server under ``gunicorn.conf.py -w 4`` or node, with its
CPU read from /proc (master + workers) over the client's run:

- **peer**: tuspy and tus-js-client (8 MiB PATCHes, one stream; @tus/server has no concatenation,
  so no parallel parts) to @tus/server, which checks no checksum and does not fsync. "Stored" is
  the last PATCH's reply.
- **project, tus**: the same two clients to our ``/files/`` (tus on the same upload service), with
  the whole-file sha256 (hashed by the client first, as the native client does) and
  ``compression: true`` in Upload-Metadata, until the server reports the upload verified.
- **project, real client**: ``python -m core.network_manager upload`` (1 and 4 chunk streams), until
  the server reports the upload verified; its time is the process's wall time (interpreter start-up,
  ~0.5 s, and the client's whole-file hash pass included; the other clients time themselves).
- **project, minimal client**: the same wire format from a few lines (init with the fingerprint,
  each chunk read once for the whole-file sha256 and its ``X-Chunk-CRC32C``, finalize with the
  sha256, poll): "send" ends with the last chunk acknowledged, "verified" when the status says so,
  so finalize's share shows (the baseline for issue 14 items 1-3).
- **minimal handler** (``bench/baseline_server.py``, 256 KiB reads like ours): the same minimal
  client; each chunk is hashed and fsynced, and there is no finalize, so stored = sent.

Rounds interleave the targets; medians are printed, with ratios to the peer from the same run.
MB = 10^6 bytes; CPU in seconds per GiB of file.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from bench._measure import run_timed
from bench.server_throughput import cpu_seconds, gunicorn
from core.checksums import ChunkChecksum, fingerprint
from core.config import parse_size
from core.protocol import (
    CHUNK_CONTENT_TYPE,
    ChunkAlgorithm,
    MiB,
    chunk_url,
    finalize_url,
    init_url,
    server_root,
    upload_status_url,
)
from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, free_port, port_open, wait_until

MB = 1e6
GiB = 1 << 30
CHUNK = 8 * MiB
PEER_DIR = REPO_ROOT / "bench" / "out" / "tus-peer"
PEER_PACKAGES = ("@tus/server", "@tus/file-store")
# tus-js-client and its driver script are the tus tests' (installed there with npm ci, as `make test` does).
TUS_JS_DIR = REPO_ROOT / "tests" / "tus" / "js"
TUS_PATH = "/files/"


# --- the file -------------------------------------------------------------------------------
def compressible_block(rng: np.random.Generator, size: int) -> bytes:
    """Sensor-like samples: a random walk at millimetre resolution (zstd level 1: about 1.6x)."""
    walk = np.round(np.cumsum(rng.normal(0.0, 0.01, size // 8)), 3)
    return walk.astype(np.float64).tobytes()


def write_file(path: Path, size: int) -> None:
    """8 MiB blocks, compressible and random in turn, from 4 + 4 distinct blocks (more is only slower)."""
    rng = np.random.default_rng(14)
    blocks = [b for _ in range(4) for b in (compressible_block(rng, CHUNK), os.urandom(CHUNK))]
    with path.open("wb") as fh:
        for index in range(0, size, CHUNK):
            fh.write(blocks[(index // CHUNK) % len(blocks)][: size - index])


def make_unique(path: Path) -> None:
    """New first bytes for the round: no server may find the file already stored."""
    with path.open("r+b") as fh:
        fh.write(os.urandom(16))


# --- clients (each runs as ``python -m bench.peer_tus --client KIND …`` under /usr/bin/time) ----
def minimal_client(url: str, path: Path, streams: int) -> dict[str, float]:
    """init, chunk PUTs on ``streams`` connections, finalize with the sha256, poll: seconds of each phase.

    The current wire format in a few lines: each chunk is read once, in order, for the whole-file
    sha256 and its X-Chunk-CRC32C; ``streams`` threads send what was read.
    """
    started = time.perf_counter()
    size = path.stat().st_size
    body = {"filename": path.name, "filesize": size, "chunk_size": CHUNK, "fingerprint": fingerprint(path)}
    reply = requests.post(init_url(url), json={**body, "compression": True}, timeout=60)
    reply.raise_for_status()
    upload_id = reply.json()["upload_id"]
    read: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=streams)
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with requests.Session() as session:
                while (item := read.get()) is not None:
                    index, data = item
                    crc = ChunkChecksum.of(ChunkAlgorithm.CRC32C, (data,))
                    headers = {crc.header: crc.hexdigest, "Content-Type": CHUNK_CONTENT_TYPE}
                    response = session.put(chunk_url(url, upload_id, index), data=data, headers=headers, timeout=120)
                    response.raise_for_status()
        except BaseException as err:  # re-raised on the main thread
            errors.append(err)
            while read.get() is not None:  # drain, so the reader never blocks on a dead stream
                pass

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    whole = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for index in range((size + CHUNK - 1) // CHUNK):
            data = os.pread(fd, CHUNK, index * CHUNK)
            whole.update(data)
            read.put((index, data))
    finally:
        os.close(fd)
        for _ in threads:
            read.put(None)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    sent = time.perf_counter() - started
    finalize = requests.post(finalize_url(url, upload_id), json={"sha256": whole.hexdigest()}, timeout=60)
    if finalize.status_code == 404:  # the minimal handler has no finalize: its chunks are stored as sent
        return {"sent": sent, "stored": sent}
    finalize.raise_for_status()
    status_url = upload_status_url(url, upload_id)
    return {"sent": sent, "stored": wait_verified(status_url, started)}


def wait_verified(status_url: str, started: float) -> float:
    """Seconds from ``started`` until the upload's status says verified (a failed upload is an error)."""
    while (status := requests.get(status_url, timeout=60).json())["state"] not in ("complete", "failed"):
        time.sleep(0.02)
    if not status.get("verified"):
        msg = f"upload not verified: {status}"
        raise RuntimeError(msg)
    return time.perf_counter() - started


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def install_tus_js() -> Path:
    if not (TUS_JS_DIR / "node_modules" / "tus-js-client" / "package.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TUS_JS_DIR, check=True)
    return TUS_JS_DIR


def tus_client(kind: str, url: str, path: Path, *, verify: bool) -> dict[str, float]:
    """tuspy's or tus-js-client's own uploader, 8 MiB PATCHes; with ``verify``, until our server reports verified.

    Metadata is always given (an empty Upload-Metadata is refused by @tus/server).
    """
    started = time.perf_counter()
    metadata = {"filename": path.name}
    if verify:
        metadata |= {"sha256": file_sha256(path), "compression": "true"}
    if kind == "tuspy":
        from tusclient import client as tus  # only the client subprocess needs tuspy

        uploader = tus.TusClient(url).uploader(file_path=str(path), chunk_size=CHUNK, metadata=metadata)
        uploader.upload()
        upload_url = str(uploader.url)
    else:
        options = {"endpoint": url, "path": str(path), "metadata": metadata, "chunkSize": CHUNK}
        done = subprocess.run(["node", "tus_client.mjs", json.dumps(options)], cwd=TUS_JS_DIR,
                              capture_output=True, text=True, check=True)  # fmt: skip
        upload_url = json.loads(done.stdout.strip().splitlines()[-1])["url"]
    sent = time.perf_counter() - started
    if not verify:
        return {"sent": sent, "stored": sent}
    root, upload_id = url.removesuffix(TUS_PATH), upload_url.rstrip("/").rsplit("/", 1)[-1]
    status_url = upload_status_url(root, upload_id)
    return {"sent": sent, "stored": wait_verified(status_url, started)}


def client_main(argv: list[str]) -> None:
    kind, url, path, streams = argv[0], argv[1], Path(argv[2]), int(argv[3])
    if kind in TUS_CLIENTS:
        result = tus_client(kind, url, path, verify=argv[4:] == ["verify"])
    else:
        result = minimal_client(url, path, streams)
    print(json.dumps(result))


# --- servers ----------------------------------------------------------------------------------
def install_peer() -> Path:
    """npm-install the peer into bench/out/tus-peer once; returns the folder holding its server script."""
    if not all((PEER_DIR / "node_modules" / name / "package.json").exists() for name in PEER_PACKAGES):
        PEER_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PEER_PACKAGES],
                       cwd=PEER_DIR, check=True)  # fmt: skip
    shutil.copy(REPO_ROOT / "bench" / "tus_server.mjs", PEER_DIR / "tus_server.mjs")
    return PEER_DIR


@contextlib.contextmanager
def tus_peer(storage: Path, log_dir: Path) -> Iterator[tuple[str, ManagedProcess]]:
    folder = install_peer()
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    argv = ["node", "tus_server.mjs", str(port), str(storage)]
    process = ManagedProcess(argv, log_path=log_dir / "tus-peer.log", cwd=folder).start()
    try:
        wait_until(lambda: port_open(port), 30, 0.1, f"@tus/server on port {port}")
        yield f"http://127.0.0.1:{port}/files/", process
    finally:
        process.stop()


# --- the run ----------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    server: str  # "peer", "ours" or "baseline"
    client: str  # "tuspy", "tus-js", "real" or "minimal"
    streams: int = 1


TUS_CLIENTS = ("tuspy", "tus-js")


@dataclass
class Sample:
    sent: float | None
    stored: float
    client_cpu: float
    client_rss: int
    server_cpu: float


@dataclass
class Server:
    url: str
    pid: int
    storage: Path
    runs: int = field(default=0)


TARGETS = [
    Target("peer: tuspy -> @tus/server", "peer", "tuspy"),
    Target("peer: tus-js-client -> @tus/server", "peer", "tus-js"),
    Target("project tus: tuspy -> /files/", "ours", "tuspy"),
    Target("project tus: tus-js-client -> /files/", "ours", "tus-js"),
    Target("project, real client, 1 stream", "ours", "real", 1),
    Target("project, real client, 4 streams", "ours", "real", 4),
    Target("project, minimal client, 1 stream", "ours", "minimal", 1),
    Target("project, minimal client, 4 streams", "ours", "minimal", 4),
    Target("minimal handler, minimal client, 1 stream", "baseline", "minimal", 1),
    Target("minimal handler, minimal client, 4 streams", "baseline", "minimal", 4),
]


def run_client(target: Target, server: Server, path: Path, work: Path) -> Sample:
    server.runs += 1
    if target.client == "real":
        state = work / f"client-state-{target.streams}-{server.runs}"
        argv = [PYTHON, "-m", "core.network_manager", "--state-dir", str(state), "upload", str(path),
                "--url", server.url, "--chunk-size", str(CHUNK), "--chunk-parallelism", str(target.streams),
                "--no-progress"]  # fmt: skip
    elif target.client in TUS_CLIENTS:
        ours = target.server == "ours"
        url = server_root(server.url) + TUS_PATH if ours else server.url
        argv = [PYTHON, "-m", "bench.peer_tus", "--client", target.client, url, str(path), "1",
                "verify" if ours else "sent"]  # fmt: skip
    else:
        argv = [PYTHON, "-m", "bench.peer_tus", "--client", target.client, server.url, str(path), str(target.streams)]
    before = cpu_seconds(server.pid)
    measured = run_timed(argv)
    server_cpu = cpu_seconds(server.pid) - before
    if target.client == "real":
        return Sample(None, measured.seconds, measured.cpu, measured.peak_rss, server_cpu)
    phases = json.loads(measured.output.strip().splitlines()[-1])
    return Sample(phases["sent"], phases["stored"], measured.cpu, measured.peak_rss, server_cpu)


def start_servers(stack: contextlib.ExitStack, work: Path) -> dict[str, Server]:
    servers = {}
    install_tus_js()
    url, process = stack.enter_context(tus_peer(work / "peer", work))
    servers["peer"] = Server(url, process.pid, work / "peer")
    for name, app in (("ours", "upload_server:app"), ("baseline", "bench.baseline_server:app")):
        storage = work / name
        env = {"BASELINE_READ_SIZE": str(256 * 1024), "UPLOAD_DIR": str(storage)}
        url, process = stack.enter_context(gunicorn(app, storage, work, **env))
        servers[name] = Server(url, process.pid, storage)
    return servers


def row(name: str, samples: list[Sample], size: int, peer: list[Sample]) -> str:
    def med(get: Callable[[Sample], float]) -> float:
        return statistics.median(get(s) for s in samples)

    gib = size / GiB
    stored = size / MB / med(lambda s: s.stored)
    peer_stored = size / MB / statistics.median(s.stored for s in peer)
    sent = "-" if samples[0].sent is None else f"{size / MB / med(lambda s: s.sent or 1):.0f}"
    cells = [name, sent, f"{stored:.0f}", f"{stored / peer_stored:.2f}", f"{med(lambda s: s.stored) / gib:.2f}",
             f"{med(lambda s: s.client_cpu) / gib:.2f}", f"{med(lambda s: s.client_rss) / MiB:.0f}",
             f"{med(lambda s: s.server_cpu) / gib:.2f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def drop_large_files(root: Path) -> None:
    """Keep the disk from filling up between runs; the server removes its own lock directories meanwhile."""
    for directory, _, names in os.walk(root):  # os.walk skips a directory that vanished, rglob raises
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                stored = Path(directory, name)
                if stored.stat().st_size >= CHUNK:
                    stored.unlink()


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--client"]:
        client_main(args_list[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="256 MiB, one round")
    args = parser.parse_args(args_list)
    size = 256 * MiB if args.short else parse_size("--size", args.size)
    rounds = 1 if args.short else args.rounds
    print(f"load average before: {os.getloadavg()[0]:.2f}; file {size / MiB:.0f} MiB, {CHUNK // MiB} MiB chunks, "
          f"{rounds} round(s), loopback", flush=True)  # fmt: skip
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[Sample]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="peer-", dir=out) as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        path = work / "bench.bag"
        write_file(path, size)
        servers = start_servers(stack, work)
        for number in range(rounds):
            shift = number % len(TARGETS)
            for target in TARGETS[shift:] + TARGETS[:shift]:
                make_unique(path)
                samples[target.name].append(run_client(target, servers[target.server], path, work))
                drop_large_files(servers[target.server].storage)
    columns = ["target", "send MB/s", "to stored/verified MB/s", "vs peer", "s/GiB to stored/verified",
               "client CPU s/GiB", "client peak RSS MiB", "server CPU s/GiB (incl. finalize)"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for target in TARGETS:
        print(row(target.name, samples[target.name], size, samples[TARGETS[0].name]))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
