"""Real gunicorn with BLOB_STORE_URI=s3://… on a real SeaweedFS: the robot client's upload, a SIGKILL, Range."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from core.network_manager import NetworkManager
from core.protocol import HEADER_CONTENT_RANGE, KiB, MiB, download_url
from tests.client.support import local_sha256, server_sha256, write_file
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import wait_until
from tests.helpers.seaweedfs import SeaweedFS
from tests.helpers.servers import GunicornServer
from tests.server.test_gunicorn import TIMEOUT, Client

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def s3_server(
    seaweedfs: SeaweedFS, gunicorn_server: Callable[..., GunicornServer], tmp_path: Path
) -> tuple[GunicornServer, str]:
    bucket = seaweedfs.new_bucket()
    env = {**seaweedfs.env(), "BLOB_STORE_URI": f"s3://{bucket}/fleet", "COMPRESSION_THRESHOLD": "0"}
    return gunicorn_server(tmp_path / "uploads", env=env), bucket


def _local_bytes(upload_dir: Path) -> list[Path]:
    return [p for sub in ("parts", "store", "staging") for p in (upload_dir / sub).rglob("*") if p.is_file()]


def test_the_robot_client_uploads_through_gunicorn_into_s3(
    s3_server: tuple[GunicornServer, str], seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    server, bucket = s3_server
    (tmp_path / "robot").mkdir()
    bag = write_file(tmp_path / "robot" / "run1.mcap", 20 * MiB + 4321)
    manager = NetworkManager(upload_url=server.upload_url, state_dir=tmp_path / "client", chunk_parallelism=4)
    try:
        manager.start()
        manager.add_upload(bag, metadata={"robot": "r1"})
        assert manager.wait(timeout=120)
        (job,) = manager.status()
    finally:
        manager.stop()

    assert job["state"] == "complete", job
    assert server_sha256(server.upload_url, job["upload_id"]) == local_sha256(bag)
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == [job["upload_id"], f"{job['upload_id']}.json"]
    assert _local_bytes(server.upload_dir) == []  # no bag byte on the app host's disk


def test_chunks_across_workers_survive_a_sigkill_and_ranges_come_from_s3(
    s3_server: tuple[GunicornServer, str],
) -> None:
    server, _ = s3_server
    client = Client(server, os.urandom(48 * MiB + 77), 8 * MiB)
    client.init()
    acknowledged: list[int] = []

    def send(index: int) -> None:
        with contextlib.suppress(requests.RequestException):
            if client.send(index).status_code == 201:
                acknowledged.append(index)

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(send, i) for i in reversed(range(client.chunks))]
        wait_until(lambda: len(acknowledged) >= 2, 60, 0.01, "first acknowledged chunks")
        server.crash()
        for future in pending:
            future.result()
    server.start()

    missing = client.status()["missing"]
    assert set(acknowledged).isdisjoint(missing)
    assert set(client.send_parallel(missing, threads=4)) == {201}
    assert client.finalize_and_wait()["state"] == "complete"
    assert client.download() == client.data
    ranged = requests.get(
        download_url(server.upload_url, client.upload_id), headers={"Range": "bytes=8388600-8388615"}, timeout=TIMEOUT
    )
    assert (ranged.status_code, ranged.content) == (206, client.data[8388600:8388616])
    assert ranged.headers[HEADER_CONTENT_RANGE] == f"bytes 8388600-8388615/{len(client.data)}"
    assert _local_bytes(server.upload_dir) == []


def test_gunicorn_refuses_to_start_on_a_missing_bucket_and_says_why(
    seaweedfs: SeaweedFS, gunicorn_server: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    env = {**seaweedfs.env(), "BLOB_STORE_URI": "s3://never-created/fleet"}

    with pytest.raises(RuntimeError, match=r"gunicorn exited early") as failed:
        gunicorn_server(tmp_path / "uploads", env=env, workers=1)

    assert "bucket 'never-created', which does not exist at the S3 endpoint" in str(failed.value)


def test_after_a_broken_link_the_robot_client_falls_back_to_whole_chunks_on_s3(
    s3_server: tuple[GunicornServer, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first break makes the client send pieces; S3 refuses them (400 chunk_size_mismatch), whole chunks follow."""
    server, _ = s3_server
    (tmp_path / "robot").mkdir()
    bag = write_file(tmp_path / "robot" / "run2.mcap", 3 * MiB + 99)
    with FaultProxy(server.port) as proxy:
        proxy.drop_after_bytes = 600 * KiB  # the first 1 MiB chunk is cut mid-body
        manager = NetworkManager(upload_url=proxy.url + "/upload", state_dir=tmp_path / "client", chunk_size=MiB)
        manager.backoff_initial, manager.backoff_max = 0.05, 0.5
        try:
            manager.start()
            manager.add_upload(bag)
            wait_until(lambda: proxy.drops >= 1, 60, 0.001, "the first cut")
            proxy.drop_after_bytes = None  # the link heals: only whole chunks may pass from now on
            assert manager.wait(timeout=120)
            (job,) = manager.status()
        finally:
            manager.stop()

    assert job["state"] == "complete", job
    assert server_sha256(server.upload_url, job["upload_id"]) == local_sha256(bag)
    assert any("chunk_size_mismatch" in r.getMessage() or "whole chunks" in r.getMessage() for r in caplog.records)
