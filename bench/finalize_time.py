"""Finalize alone: last chunk acknowledged → verified and stored, per GiB of incompressible data.

``python -m bench finalize_time [-- --size-mib 256 --rounds 3]``

In process (the app's test client, no HTTP), the default server settings on a temporary
``UPLOAD_DIR`` under ``bench/out``: one random file, init with ``compression: true`` (the sample
check then stores it raw), its 8 MiB chunks, then the finalize request and the finalize job, timed
together. Two ways to declare the whole-file checksum, interleaved within each round:

- **md5 + sha256 at init** (the robot client before issue 14: finalize computes both);
- **sha256 at finalize** (the client that hashes while sending: finalize computes sha256 only).

Prints medians (wall and this process's CPU, s/GiB) and the ratio of the second to the first.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from flask.testing import FlaskClient

from core.protocol import (
    CHUNK_CONTENT_TYPE,
    HEADER_CHUNK_SHA256,
    MiB,
    chunk_url,
    finalize_url,
    init_url,
    upload_status_url,
)
from core.server.app import create_app

CHUNK = 8 * MiB
GiB = 1024 * MiB
OUT = Path(__file__).resolve().parent / "out"
URL = "http://localhost/upload"  # the test client's own host
WAYS = ("md5 + sha256 at init", "sha256 at finalize")


def upload_until_finalize(client: FlaskClient, data: bytes, way: str) -> tuple[str, dict[str, str] | None]:
    """Init and send every chunk; returns the upload id and the finalize body to send."""
    body: dict[str, object] = {"filename": "r.bag", "filesize": len(data), "chunk_size": CHUNK, "compression": True}
    sha256 = hashlib.sha256(data).hexdigest()
    if way == WAYS[0]:
        body |= {"checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(), "sha256": sha256}
    upload_id = client.post(init_url(URL), json=body).get_json()["upload_id"]
    for index in range(len(data) // CHUNK):
        piece = data[index * CHUNK : (index + 1) * CHUNK]
        headers = {HEADER_CHUNK_SHA256: hashlib.sha256(piece).hexdigest(), "Content-Type": CHUNK_CONTENT_TYPE}
        reply = client.put(chunk_url(URL, upload_id, index), data=piece, headers=headers)
        if reply.status_code not in (200, 201):
            msg = f"chunk {index}: {reply.get_json()}"
            raise RuntimeError(msg)
    return upload_id, (None if way == WAYS[0] else {"sha256": sha256})


def finalize_seconds(data: bytes, way: str) -> tuple[float, float]:
    """(wall, CPU) seconds from the finalize request to a verified, stored file."""
    with tempfile.TemporaryDirectory(prefix="finalize-", dir=OUT) as tmp:
        settings = {"upload_dir": Path(tmp), "auth_enabled": False, "ratelimit_enabled": False}
        app = create_app({**settings, "background_jobs": False})
        client = app.test_client()
        upload_id, body = upload_until_finalize(client, data, way)
        wall, cpu = time.perf_counter(), time.process_time()
        if client.post(finalize_url(URL, upload_id), json=body).status_code != 202:
            msg = "finalize was not accepted"
            raise RuntimeError(msg)
        app.extensions["job_runner"].run_once()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        status = client.get(upload_status_url(URL, upload_id)).get_json()
        if not (status["state"] == "complete" and status["verified"]):
            msg = f"not verified: {status}"
            raise RuntimeError(msg)
        return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("upload_server").setLevel(logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    size = args.size_mib // (CHUNK // MiB) * CHUNK
    data = os.urandom(size)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {size // MiB} MiB random, {args.rounds} round(s)")
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for number in range(args.rounds):
        for way in WAYS[number % 2 :] + WAYS[: number % 2]:
            results[way].append(finalize_seconds(data, way))
    print("| checksum declared | finalize wall s/GiB | finalize CPU s/GiB |")
    print("|---|---|---|")
    medians = {}
    for way in WAYS:
        wall = statistics.median(w for w, _ in results[way]) * GiB / size
        cpu = statistics.median(c for _, c in results[way]) * GiB / size
        medians[way] = wall
        print(f"| {way} | {wall:.2f} | {cpu:.2f} |")
    print(f"ratio (sha256 at finalize / md5 + sha256 at init, wall): {medians[WAYS[1]] / medians[WAYS[0]]:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
