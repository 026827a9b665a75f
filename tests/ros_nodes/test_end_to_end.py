"""The simulated robot records, splits and uploads through NetworkManager to a real gunicorn server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from core.client.journal import Journal
from core.protocol import download_url
from ros_nodes.core.recorder import STATE_DIR
from ros_nodes.core.salvage import RECOVERED_SUFFIX
from tests.helpers.processes import REPO_ROOT, wait_until
from tests.helpers.servers import GunicornServer
from tests.ros_nodes.support import split_dirs

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path):
    with GunicornServer(tmp_path / "server", workers=2) as running:
        yield running


def simulate(output: Path, upload_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "ros_nodes.simulate",
        "--duration", "4", "--output", str(output), "--robot-id", "e2e-robot",
        "--max-bag-duration", "1", "--min-free-disk", "0", "--heartbeat", "1",
        "--upload-url", upload_url, "--wait-uploads", "120", *extra,
    ]  # fmt: skip
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_every_split_arrives_byte_identical_on_the_server(server: GunicornServer, tmp_path: Path, storage: str) -> None:
    output = tmp_path / "robot"
    result = simulate(output, server.upload_url, "--storage", storage)
    assert result.returncode == 0, result.stderr[-3000:]

    bags = split_dirs(output)
    assert len(bags) >= 3
    local = {f.resolve(): f.read_bytes() for bag in bags for f in bag.iterdir()}
    journal = Journal(output / STATE_DIR / "uploads")
    jobs = {Path(job.path): job for job in journal.jobs()}
    journal.close()
    assert set(jobs) == set(local)
    for path, data in local.items():
        job = jobs[path]
        assert job.state.value == "complete", job.error
        reply = requests.get(download_url(server.upload_url, job.upload_id), timeout=(5, 60))
        assert reply.status_code == 200
        assert sha256(reply.content) == sha256(data), path
        assert job.metadata["robot_id"] == "e2e-robot"
        assert job.metadata["bag"] == path.parent.name


def test_after_sigkill_a_restart_uploads_closed_and_salvaged_splits(server: GunicornServer, tmp_path: Path) -> None:
    output = tmp_path / "robot"
    argv = [
        sys.executable, "-m", "ros_nodes.simulate",
        "--duration", "60", "--output", str(output), "--robot-id", "e2e-robot",
        "--max-bag-duration", "1", "--min-free-disk", "0", "--heartbeat", "0", "--upload-url", server.upload_url,
    ]  # fmt: skip
    with (tmp_path / "killed.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:

            def open_split_has_a_chunk() -> bool:
                dirs = split_dirs(output) if output.exists() else []
                closed = [d for d in dirs if (d / "metadata.yaml").exists()]
                open_ = [f for d in dirs for f in d.glob("*.mcap") if not (d / "metadata.yaml").exists()]
                return len(closed) >= 2 and any(f.stat().st_size > 1_200_000 for f in open_)

            wait_until(open_split_has_a_chunk, 60, what="closed splits and an open one with a chunk")
        finally:
            proc.kill()
            proc.wait(10)

    result = simulate(output, server.upload_url, "--duration", "1")
    assert result.returncode == 0, result.stderr[-3000:]

    bags = split_dirs(output)
    assert sum(bag.name.endswith(RECOVERED_SUFFIX) for bag in bags) == 1
    journal = Journal(output / STATE_DIR / "uploads")
    jobs = {Path(job.path): job for job in journal.jobs() if job.state.value == "complete"}
    journal.close()
    for file in (f.resolve() for bag in bags for f in bag.iterdir()):
        reply = requests.get(download_url(server.upload_url, jobs[file].upload_id), timeout=(5, 60))
        assert sha256(reply.content) == sha256(file.read_bytes()), file
    recovered = [job for job in jobs.values() if job.metadata["recovered"]]
    assert {Path(job.path).parent.name for job in recovered} == {b.name for b in bags if b.name.endswith("_recovered")}
