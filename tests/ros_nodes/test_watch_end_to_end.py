"""``python -m ros_nodes.watch`` against a real gunicorn: a bag copied in slowly is uploaded once, intact.

The watcher is SIGKILLed while its upload is in flight (through a throttled
fault proxy) and restarted: the bag must not be queued twice, the interrupted
upload resumes, and every file downloads byte-identical from the server.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from core.client.journal import Journal
from core.config import RecorderConfig
from core.protocol import download_url, uploads_url
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, wait_until
from tests.helpers.servers import GunicornServer
from tests.ros_nodes.support import Sent, record_all, split_dirs, with_changes

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

SETTLE = ["--interval", "0.2", "--settle", "1", "--robot-id", "watched-robot"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "server", workers=2) as running:
        yield running


def server_uploads(server: GunicornServer) -> list[dict[str, Any]]:
    reply = requests.get(uploads_url(server.upload_url), params={"limit": 100}, timeout=(5, 30))
    reply.raise_for_status()
    return reply.json()["uploads"]


def copy_slowly(source: Path, target: Path, pieces: int = 4, pause: float = 0.4) -> None:
    """Copy a bag folder like a slow transfer: storage file in pieces, ``metadata.yaml`` last."""
    target.mkdir()
    for file in sorted(source.glob("*.mcap")):
        data = file.read_bytes()
        step = -(-len(data) // pieces)
        with (target / file.name).open("wb") as out:
            for start in range(0, len(data), step):
                out.write(data[start : start + step])
                out.flush()
                time.sleep(pause)
    shutil.copy2(source / "metadata.yaml", target / "metadata.yaml")


def test_watched_bag_uploads_once_across_a_watcher_kill_and_arrives_byte_identical(
    server: GunicornServer, config: RecorderConfig, traffic: list[Sent], tmp_path: Path
) -> None:
    record_all(with_changes(config, max_bag_duration=2.5), traffic)  # two complete bags, as ros2 bag record leaves
    first, second = split_dirs(config.output_dir)
    watched = tmp_path / "watched"
    watched.mkdir()

    with FaultProxy(server.port) as proxy:
        proxy.throttle = 1_000_000  # bytes/s: the first upload is still in flight when the watcher dies
        argv = [PYTHON, "-m", "ros_nodes.watch", str(watched), "--upload-url", proxy.url + "/upload", *SETTLE]
        watcher = ManagedProcess(argv, log_path=tmp_path / "watch-1.log").start()
        try:
            copy_slowly(first, watched / first.name)
            assert server_uploads(server) == []  # nothing went out while the copy was incomplete
            wait_until(lambda: proxy.bytes_up > 1_000_000, 30, what="the first bag's upload to be in flight")
            watcher.kill()
        finally:
            watcher.stop()
    assert not any(u["state"] == "complete" for u in server_uploads(server) if u["filename"].endswith(".mcap"))

    shutil.copytree(second, watched / second.name)
    argv = [sys.executable, "-m", "ros_nodes.watch", str(watched), "--upload-url", server.upload_url, *SETTLE]
    result = subprocess.run([*argv, "--once"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    (queued,) = [line for line in result.stderr.splitlines() if "is complete: queued" in line]
    assert second.name in queued  # the killed run's bag resumed from the journals, not queued again

    local = {f.resolve(): f.read_bytes() for bag in (first, second) for f in (watched / bag.name).iterdir()}
    journal = Journal(watched / ".watch" / "uploads")
    jobs = journal.jobs()
    journal.close()
    assert sorted(Path(job.path) for job in jobs) == sorted(local)  # each file queued exactly once
    for job in jobs:
        assert job.state.value == "complete", job.error
        assert job.metadata["source"] == "watch"
        reply = requests.get(download_url(server.upload_url, job.upload_id), timeout=(5, 60))
        assert reply.status_code == 200
        assert reply.content == local[Path(job.path)], job.path
    per_name = collections.Counter((u["filename"], u["state"]) for u in server_uploads(server))
    assert per_name == collections.Counter((Path(path).name, "complete") for path in local)
