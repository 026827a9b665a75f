"""Deployment choices, measured: gunicorn worker class and count, and nginx request buffering for chunk PUTs.

Sends the same chunks (project wire format: PUT with X-Chunk-SHA256, fsync before ack) with
1 and 4 parallel streams to:

- gunicorn directly, in the shipped configuration (gthread, 4 workers x 4 threads) = the baseline,
  and in alternatives (sync workers; other worker counts);
- the shipped nginx site (TLS) in front of the shipped gunicorn, with ``proxy_request_buffering``
  off (shipped) and on.

Prints MB/s (10^6 B/s), median of ``--rounds``, and each row's ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

from core.protocol import CHUNK_CONTENT_TYPE, HEADER_CHUNK_SHA256, MiB, chunk_url, init_url
from tests.helpers.nginx import NginxServer
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import make_tls_files

CHUNK = 8 * MiB
BASE_ENV = {"RATELIMIT_ENABLED": "0", "AUTH_ENABLED": "0", "BACKGROUND_JOBS": "0", "TRUSTED_PROXIES": "127.0.0.1"}
BUFFERING_ON = {"proxy_request_buffering off;": "proxy_request_buffering on;"}


def make_chunks(total: int) -> list[tuple[bytes, str]]:
    return [(data, hashlib.sha256(data).hexdigest()) for data in (os.urandom(CHUNK) for _ in range(total // CHUNK))]


def upload_seconds(base_url: str, chunks: list[tuple[bytes, str]], streams: int, verify: bool | str) -> float:
    """Init one upload, then time only the chunk PUTs (spread over ``streams`` connections)."""
    size = CHUNK * len(chunks)
    upload_url = base_url + "/upload"
    body = {"filename": f"bench-{time.monotonic_ns()}.bin", "filesize": size, "chunks": len(chunks)}
    body |= {"chunk_size": CHUNK, "sha256": hashlib.sha256(b"".join(c for c, _ in chunks)).hexdigest()}
    reply = requests.post(init_url(upload_url), json=body, verify=verify, timeout=30)
    reply.raise_for_status()
    upload_id = reply.json()["upload_id"]
    sessions = [requests.Session() for _ in range(streams)]

    def send(index: int) -> None:
        data, sha = chunks[index]
        headers = {HEADER_CHUNK_SHA256: sha, "Content-Type": CHUNK_CONTENT_TYPE}
        session = sessions[index % streams]
        session.put(chunk_url(upload_url, upload_id, index), data=data, headers=headers, verify=verify, timeout=120)

    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(send, range(len(chunks))))
    return time.perf_counter() - started


@contextmanager
def gunicorn(base: Path, *, workers: int, worker_class: str = "gthread") -> Iterator[GunicornServer]:
    extra = ["-k", worker_class] if worker_class != "gthread" else []
    with GunicornServer(base / f"up-{time.monotonic_ns()}", workers=workers, env=BASE_ENV, extra_args=extra) as app:
        yield app


@contextmanager
def behind_nginx(base: Path, variations: dict[str, str]) -> Iterator[tuple[str, str]]:
    tls = make_tls_files(base / "tls")
    with gunicorn(base, workers=4) as app:
        prefix = base / f"nginx-{time.monotonic_ns()}"
        nginx = NginxServer(prefix, upstream_ports=[app.port], cert=tls.cert, key=tls.key, variations=variations)
        with nginx:
            yield nginx.url, str(tls.ca)


def measure(open_target: Callable[[], object], chunks: list[tuple[bytes, str]], rounds: int) -> dict[int, float]:
    """MB/s per stream count, median over rounds, on one running target."""
    results: dict[int, float] = {}
    with open_target() as target:  # type: ignore[attr-defined]
        url, verify = target if isinstance(target, tuple) else (target.url, True)
        upload_seconds(url, chunks[:2], 1, verify)  # warm-up: imports, connections, TLS session
        for streams in (1, 4):
            times = [upload_seconds(url, chunks, streams, verify) for _ in range(rounds)]
            results[streams] = CHUNK * len(chunks) / statistics.median(times) / 1e6
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per upload")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    chunks = make_chunks(args.mib * MiB)
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        base = Path(tmp)
        targets: list[tuple[str, Callable[[], object]]] = [
            ("gunicorn gthread -w 4 (shipped) [baseline]", lambda: gunicorn(base, workers=4)),
            ("gunicorn gthread -w 2", lambda: gunicorn(base, workers=2)),
            ("gunicorn gthread -w 8", lambda: gunicorn(base, workers=8)),
            ("gunicorn sync -w 4", lambda: gunicorn(base, workers=4, worker_class="sync")),
            ("nginx TLS, request buffering off (shipped)", lambda: behind_nginx(base, {})),
            ("nginx TLS, request buffering on", lambda: behind_nginx(base, BUFFERING_ON)),
        ]
        rows = [(name, measure(open_target, chunks, args.rounds)) for name, open_target in targets]
    baseline = rows[0][1]
    print(f"{args.mib} MiB per upload in 8 MiB chunks, median of {args.rounds} rounds; MB = 10^6 B")
    print(f"{'target':46} {'1 stream':>9} {'ratio':>6} {'4 streams':>10} {'ratio':>6}")
    for name, result in rows:
        one, four = result[1], result[4]
        print(f"{name:46} {one:9.0f} {one / baseline[1]:6.2f} {four:10.0f} {four / baseline[4]:6.2f}")


if __name__ == "__main__":
    main()
