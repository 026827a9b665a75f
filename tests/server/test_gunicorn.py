"""Against a real gunicorn with 4 workers: parallel chunks across workers, SIGKILL mid-upload and mid-finalize."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from core.protocol import (
    HEADER_CHUNK_SHA256,
    UPLOAD_PREFIX,
    KiB,
    MiB,
    chunk_url,
    download_url,
    finalize_url,
    init_url,
    upload_status_url,
)
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer

pytestmark = pytest.mark.gunicorn
TIMEOUT = (5, 60)


class Client:
    """The upload protocol over HTTP; plain ``requests`` calls, so threads can share one instance."""

    def __init__(self, server: GunicornServer, data: bytes, chunk_size: int, upload_url: str | None = None) -> None:
        self.server = server
        self.upload_url = upload_url or server.upload_url
        self.data = data
        self.chunk_size = chunk_size
        self.upload_id = ""

    @property
    def chunks(self) -> int:
        return -(-len(self.data) // self.chunk_size)

    def init(self, **extra: Any) -> dict[str, Any]:
        body = {
            "filename": "robot.bag",
            "filesize": len(self.data),
            "chunk_size": self.chunk_size,
            "checksum": hashlib.md5(self.data, usedforsecurity=False).hexdigest(),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            **extra,
        }
        response = requests.post(init_url(self.upload_url), json=body, timeout=TIMEOUT)
        assert response.status_code in (200, 201), response.text
        reply: dict[str, Any] = response.json()
        self.upload_id = reply["upload_id"]
        return reply

    def send(self, index: int) -> requests.Response:
        piece = self.data[index * self.chunk_size : (index + 1) * self.chunk_size]
        headers = {HEADER_CHUNK_SHA256: hashlib.sha256(piece).hexdigest()}
        url = chunk_url(self.upload_url, self.upload_id, index)
        return requests.put(url, data=piece, headers=headers, timeout=TIMEOUT)

    def send_parallel(self, indices: list[int], threads: int = 8) -> list[int]:
        with ThreadPoolExecutor(threads) as pool:
            return [r.status_code for r in pool.map(self.send, indices)]

    def status(self) -> dict[str, Any]:
        response = requests.get(upload_status_url(self.upload_url, self.upload_id), timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finalize_and_wait(self, timeout: float = 60) -> dict[str, Any]:
        response = requests.post(finalize_url(self.upload_url, self.upload_id), timeout=TIMEOUT)
        assert response.status_code in (200, 202), response.text
        wait_until(lambda: self.status()["state"] != "finalizing", timeout, 0.2, "finalize")
        return self.status()

    def download(self) -> bytes:
        response = requests.get(download_url(self.upload_url, self.upload_id), timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.content


def test_chunks_of_one_upload_spread_over_workers_in_parallel(
    gunicorn_server: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    # sync workers take one request at a time, and the throttled link keeps each chunk request busy
    # for ~0.1 s, so eight parallel chunks cannot all land on one worker (with fast requests on a
    # loaded machine one worker may win every accept and the test would prove nothing).
    server = gunicorn_server(
        extra_args=[
            "--worker-class", "sync",
            "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(m)s",
        ]
    )  # fmt: skip
    with FaultProxy(server.port) as slow_link:
        slow_link.throttle = 2 * MiB
        client = Client(server, os.urandom(8 * MiB + 1234), 256 * KiB, upload_url=slow_link.url + UPLOAD_PREFIX)
        client.init()
        order = list(range(client.chunks))
        random.shuffle(order)

        assert set(client.send_parallel(order)) == {201}
        slow_link.throttle = None
        status = client.finalize_and_wait()
        downloaded = client.download()
    workers = {line.split()[0] for line in access_log.read_text().splitlines() if line.endswith(" PUT")}

    assert len(workers) >= 2, "all chunks were served by one worker; the test proves nothing"
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert downloaded == client.data


def test_racing_sends_of_one_chunk_across_workers_store_it_once(gunicorn_server: Callable[..., GunicornServer]) -> None:
    server = gunicorn_server()
    client = Client(server, os.urandom(2 * MiB), 1 * MiB)
    client.init()

    codes = client.send_parallel([0] * 12, threads=12)

    assert sorted(codes) == [200] * 11 + [201]
    client.send(1)
    assert client.finalize_and_wait()["state"] == "complete"
    assert client.download() == client.data


def test_server_killed_mid_upload_resumes_after_restart(gunicorn_server: Callable[..., GunicornServer]) -> None:
    server = gunicorn_server()
    client = Client(server, os.urandom(24 * MiB + 77), 512 * KiB)
    first = client.init()
    acknowledged: list[int] = []

    def send(index: int) -> None:
        with contextlib.suppress(requests.RequestException):
            if client.send(index).status_code == 201:
                acknowledged.append(index)

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(send, i) for i in range(client.chunks)]
        wait_until(lambda: len(acknowledged) >= 5, 30, 0.01, "first acknowledged chunks")
        server.crash()
        for future in pending:
            future.result()
    server.start()
    resumed = client.init()

    assert resumed["upload_id"] == first["upload_id"]
    assert resumed["resumed"] is True
    assert set(acknowledged) <= set(resumed["received"])
    assert len(resumed["received"]) < client.chunks
    missing = client.status()["missing"]
    assert set(client.send_parallel(missing)) == {201}
    assert client.finalize_and_wait()["state"] == "complete"
    assert client.download() == client.data


@pytest.mark.slow
def test_finalize_interrupted_by_kill_resumes_after_restart(gunicorn_server: Callable[..., GunicornServer]) -> None:
    # A slow codec level makes finalize last long enough to kill it in the middle.
    env = {"JOB_LEASE": "4", "COMPRESSION_THRESHOLD": "0", "COMPRESSION_LEVEL": "19"}
    server = gunicorn_server(env=env)
    words = [os.urandom(4).hex().encode() for _ in range(2000)]
    data = b" ".join(random.choice(words) for _ in range(1_400_000))
    client = Client(server, data, 1 * MiB)
    client.init(compression="zstd")
    assert set(client.send_parallel(list(range(client.chunks)), threads=4)) == {201}
    assert requests.post(finalize_url(server.upload_url, client.upload_id), timeout=TIMEOUT).status_code == 202
    wait_until(lambda: client.status()["progress"] > 0, 60, 0.1, "finalize progress")

    server.crash()
    server.start()

    wait_until(lambda: client.status()["state"] == "complete", 120, 0.5, "finalize after restart")
    status = client.status()
    assert status["verified"] is True
    assert status["codec"] == "zstd"
    assert client.download() == client.data
