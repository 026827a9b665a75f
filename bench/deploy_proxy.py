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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
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
        reply = session.put(
            chunk_url(upload_url, upload_id, index), data=data, headers=headers, verify=verify, timeout=120
        )
        if reply.status_code != 201:
            msg = f"chunk {index}: HTTP {reply.status_code} {reply.text[:200]}"
            raise RuntimeError(msg)

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
    tls = make_tls_files(base / f"tls-{time.monotonic_ns()}")
    with gunicorn(base, workers=4) as app:
        prefix = base / f"nginx-{time.monotonic_ns()}"
        nginx = NginxServer(prefix, upstream_ports=[app.port], cert=tls.cert, key=tls.key, variations=variations)
        with nginx:
            yield nginx.url, str(tls.ca)


def target_url(target: object) -> tuple[str, bool | str]:
    return target if isinstance(target, tuple) else (target.url, True)  # type: ignore[attr-defined,return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per upload")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    chunks = make_chunks(args.mib * MiB)
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        targets = {
            "gunicorn gthread -w 4 (shipped) [baseline]": gunicorn(base, workers=4),
            "gunicorn gthread -w 2": gunicorn(base, workers=2),
            "gunicorn gthread -w 8": gunicorn(base, workers=8),
            "gunicorn sync -w 4": gunicorn(base, workers=4, worker_class="sync"),
            "nginx TLS, request buffering off (shipped)": behind_nginx(base, {}),
            "nginx TLS, request buffering on": behind_nginx(base, BUFFERING_ON),
        }
        urls = {name: target_url(stack.enter_context(target)) for name, target in targets.items()}
        for url, verify in urls.values():
            upload_seconds(url, chunks[:2], 1, verify)  # warm-up: imports, connections, TLS sessions
        # Rounds interleave the targets, so load from elsewhere on the machine hits all of them alike.
        for _ in range(args.rounds):
            for name, (url, verify) in urls.items():
                for streams in (1, 4):
                    times.setdefault((name, streams), []).append(upload_seconds(url, chunks, streams, verify))
    rate = {key: CHUNK * len(chunks) / statistics.median(values) / 1e6 for key, values in times.items()}
    baseline = next(iter(urls))
    print(f"{args.mib} MiB per upload in 8 MiB chunks, median of {args.rounds} interleaved rounds; MB = 10^6 B")
    print(f"{'target':46} {'1 stream':>9} {'ratio':>6} {'4 streams':>10} {'ratio':>6}")
    for name in urls:
        one, four = rate[(name, 1)], rate[(name, 4)]
        print(f"{name:46} {one:9.0f} {one / rate[(baseline, 1)]:6.2f} {four:10.0f} {four / rate[(baseline, 4)]:6.2f}")


if __name__ == "__main__":
    main()
