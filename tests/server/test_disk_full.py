"""A full disk under UPLOAD_DIR: every route answers 507 JSON (or its usual reply), never a 500 or HTML.

The storage root is a small tmpfs mounted by the test (root only), served by a
real gunicorn. The test fills it with a ballast file, checks every route, then
deletes the ballast and checks that the same server serves again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import requests

from core.protocol import (
    HEALTH_PATH,
    INIT_PATH,
    UPLOADS_PATH,
    ErrorCode,
    KiB,
    MiB,
    chunk_url,
    heartbeat_url,
    upload_status_url,
)
from core.server.metrics import METRICS_PATH
from core.server.openapi import OPENAPI_PATH
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer

pytestmark = [
    pytest.mark.gunicorn,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

TMPFS_SIZE = "24m"
WORKERS = 2
# core.server.limits logs this once per worker as it builds the app (rate limits are off in tests).
WORKER_READY = "RATELIMIT_ENABLED=0: no rate limits are applied"
CHUNK_SIZE = 64 * KiB
FILE_SIZE = 4 * CHUNK_SIZE


def write_until_refused(out: BinaryIO, size: int) -> None:
    while True:
        out.write(b"\0" * size)


@dataclass
class FullDisk:
    server: GunicornServer
    mount: Path
    upload_id: str

    def fill(self) -> None:
        """Write ballast until the filesystem refuses a byte more."""
        with (self.mount / "ballast").open("wb", buffering=0) as out:
            for size in (MiB, 4 * KiB, 512):
                with pytest.raises(OSError, match="No space left") as refused:
                    write_until_refused(out, size)
                assert refused.value.errno == errno.ENOSPC

    def free(self) -> None:
        (self.mount / "ballast").unlink()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def full_disk(tmpfs: Path, tmp_path: Path) -> Iterator[FullDisk]:
    """gunicorn on the tmpfs (its log elsewhere), with one upload half sent and one heartbeat stored."""
    upload_dir = tmpfs / "uploads"
    upload_dir.mkdir()
    # MIN_FREE_DISK off: this test fills the disk for real (the floor's early 507 is tested in test_storage_bounds).
    env = {"DASHBOARD_SSE_MAX_SECONDS": "0.5", "MIN_FREE_DISK": "0"}
    with GunicornServer(upload_dir, workers=WORKERS, auth=True, env=env, log_dir=tmp_path) as server:
        # Every worker has built its app before the disk fills (a worker booting later is its own test).
        wait_until(lambda: server.log().count(WORKER_READY) >= WORKERS, 30, 0.05, "every worker to boot")
        init = requests.post(
            server.url + INIT_PATH,
            json={"filename": "a.mcap", "filesize": FILE_SIZE, "chunk_size": CHUNK_SIZE},
            headers=server.headers(),
            timeout=10,
        )
        assert init.status_code == 201, init.text
        upload_id = init.json()["upload_id"]
        first = requests.put(
            chunk_url(server.upload_url, upload_id, 0), data=bytes(CHUNK_SIZE), headers=server.headers(), timeout=10
        )
        assert first.status_code == 201, first.text
        assert heartbeat(server).status_code == 200
        yield FullDisk(server, tmpfs, upload_id)
        assert "Traceback" not in server.log(), server.log()[-5000:]


def heartbeat(server: GunicornServer) -> requests.Response:
    return requests.post(
        heartbeat_url(server.upload_url, "robot-1"),
        json={"sent_at": 1.0, "recorder": {"state": "recording"}, "host": {"disk_free": 1}},
        headers=server.headers(),
        timeout=10,
    )


def chunk(disk: FullDisk, index: int) -> requests.Response:
    server = disk.server
    body = bytes(CHUNK_SIZE)
    headers = server.headers(**{"X-Chunk-SHA256": hashlib.sha256(body).hexdigest()})
    return requests.put(chunk_url(server.upload_url, disk.upload_id, index), data=body, headers=headers, timeout=10)


def init(disk: FullDisk) -> requests.Response:
    body = {"filename": "b.mcap", "filesize": FILE_SIZE, "chunk_size": CHUNK_SIZE}
    return requests.post(disk.server.url + INIT_PATH, json=body, headers=disk.server.headers(), timeout=10)


def admin_get(path: str) -> Callable[[FullDisk], requests.Response]:
    def get(disk: FullDisk) -> requests.Response:
        headers = disk.server.headers(disk.server.admin_key)
        return requests.get(disk.server.url + path, headers=headers, timeout=10)

    return get


def status(disk: FullDisk) -> requests.Response:
    url = upload_status_url(disk.server.upload_url, disk.upload_id)
    return requests.get(url, headers=disk.server.headers(), timeout=10)


# Routes that must write to answer; on a full disk each of them is a 507 in JSON.
WRITES: dict[str, Callable[[FullDisk], requests.Response]] = {
    "heartbeat": lambda disk: heartbeat(disk.server),
    "init": init,
    "chunk": lambda disk: chunk(disk, 1),
    "dashboard command": lambda disk: requests.post(
        disk.server.url + "/dashboard/api/robots/robot-1/commands",
        json={"action": "pause"},
        headers=disk.server.headers(disk.server.admin_key),
        timeout=10,
    ),
}
# Routes that may still answer from what is stored; a 507 is acceptable, a 500 or HTML never.
READS: dict[str, Callable[[FullDisk], requests.Response]] = {
    "metrics": admin_get(METRICS_PATH),
    "upload status": status,
    "upload list": admin_get(UPLOADS_PATH),
    "health": admin_get(HEALTH_PATH),
    "openapi": admin_get(OPENAPI_PATH),
}


def events(disk: FullDisk) -> dict[str, str]:
    """The dashboard's event stream (it ends after DASHBOARD_SSE_MAX_SECONDS): last data of each event name."""
    reply = admin_get("/dashboard/events")(disk)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    found, name = {}, ""
    for line in reply.text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            found[name] = line.removeprefix("data: ")
    return found


def assert_insufficient_storage(name: str, reply: requests.Response) -> None:
    assert reply.status_code == 507, f"{name}: {reply.status_code} {reply.text[:500]}"
    assert reply.headers["Content-Type"].startswith("application/json"), name
    error = reply.json()["error"]
    assert error["code"] == ErrorCode.INSUFFICIENT_STORAGE.value, name
    assert reply.json()["success"] is False


@pytest.mark.slow
def test_every_route_answers_507_json_while_the_disk_is_full_and_serves_again_after(full_disk: FullDisk) -> None:
    full_disk.fill()
    # Twice: the second round meets workers whose connections already failed once.
    for _ in range(2):
        for name, call in WRITES.items():
            assert_insufficient_storage(name, call(full_disk))
        for name, call in READS.items():
            reply = call(full_disk)
            if reply.status_code != 200:
                assert_insufficient_storage(name, reply)
        # The dashboard is where an operator sees the disk is full: it reads, whatever it cannot save
        # (its request counters are best effort), and so does its event stream.
        state = admin_get("/dashboard/api/state")(full_disk)
        assert state.status_code == 200, state.text
        assert state.json()["server"]["storage"]["free"] < CHUNK_SIZE
        streamed = events(full_disk)
        assert "error" not in streamed, streamed
        assert json.loads(streamed["state"])["server"]["storage"]["free"] < CHUNK_SIZE

    full_disk.free()

    assert heartbeat(full_disk.server).status_code == 200
    assert init(full_disk).status_code == 201
    assert [chunk(full_disk, i).status_code for i in (1, 2, 3)] == [201, 201, 201]
    for name, call in READS.items():
        assert call(full_disk).status_code == 200, name
    assert status(full_disk).json()["received_count"] == 4
    assert set(events(full_disk)) == {"state", "bye"}


@pytest.mark.slow
def test_a_worker_that_boots_while_the_disk_is_full_serves_instead_of_stopping_the_server(
    full_disk: FullDisk,
) -> None:
    """gunicorn replaces a dead worker; if the replacement could not boot, gunicorn would stop altogether."""
    server = full_disk.server
    assert server.process is not None
    full_disk.fill()
    os.kill(server.worker_pids()[0], signal.SIGKILL)

    wait_until(
        lambda: server.log().count(WORKER_READY) > WORKERS or not server.process.alive(),  # type: ignore[union-attr]
        30,
        0.05,
        "the replacement worker to boot",
    )

    assert server.process.alive(), server.log()[-3000:]
    for _ in range(2 * WORKERS):  # reach both workers, the new one included
        assert_insufficient_storage("init", init(full_disk))
        reply = status(full_disk)
        assert reply.status_code in (200, 507), reply.text
    full_disk.free()
    assert init(full_disk).status_code == 201
