"""SIGKILL in each window of a job's life ends, after a restart, in one verified copy and the right retention.

A child process runs a real NetworkManager with the step after the window
replaced by "write a marker, then hang"; the test kills it with -9 there and
restarts in-process on the same journal.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from core.client.journal import JobState
from core.client.retention import UPLOADED_DIR_NAME
from core.protocol import MiB
from tests.client.support import local_sha256, server_sha256
from tests.helpers.processes import PYTHON, REPO_ROOT, wait_until

pytestmark = pytest.mark.gunicorn

CHILD = """
import sys, time
from pathlib import Path
import core.client.job as job
from core.client.transfer import ServerClient
from core.network_manager import NetworkManager

window, url, bag, state, marker, retention = sys.argv[1:7]

def hang(*_args, **_kwargs):
    Path(marker).write_text(window)
    time.sleep(3600)

if window == "mid-send":
    # Chunk 0 was read, hashed and acknowledged; the whole-file sha256 is not journaled yet.
    real_read = job.UploadJob._read_chunk
    def read_chunk(self, fd, index, *rest):
        if index == 1:
            hang()
        return real_read(self, fd, index, *rest)
    job.UploadJob._read_chunk = read_chunk
elif window == "after-finalize":
    real_finalize = ServerClient.finalize
    def finalize(self, *args, **kwargs):
        real_finalize(self, *args, **kwargs)
        hang()
    ServerClient.finalize = finalize
elif window == "complete-before-retention":
    job.finish_pending_retention = hang
elif window == "retention-before-journal":
    real_finish = job.finish_retention
    def finish_retention(*args, **kwargs):
        real_finish(*args, **kwargs)
        hang()
    job.finish_retention = finish_retention

manager = NetworkManager(upload_url=url, state_dir=state, retention=retention, chunk_size=256 * 1024)
manager.add_upload(bag)
manager.start()
time.sleep(3600)
"""

WINDOWS = ["mid-send", "after-finalize", "complete-before-retention", "retention-before-journal"]


@pytest.mark.parametrize("retention", ["delete", "move"])
@pytest.mark.parametrize("window", WINDOWS)
def test_sigkill_in_each_window_resumes_to_one_verified_copy_and_retention_acts_once(
    server, make_manager, make_file, tmp_path: Path, window: str, retention: str
):
    bag = make_file(2 * MiB)
    sha = local_sha256(bag)
    state, marker = tmp_path / "state", tmp_path / "marker"
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [PYTHON, "-c", CHILD, window, server.upload_url, str(bag), str(state), str(marker), retention],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(lambda: marker.exists() or child.poll() is not None, 60, what=f"the child to reach {window}")
            assert marker.exists(), log.read_text()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)

    manager = make_manager(server.upload_url, state_dir=state, retention=retention)
    manager.start()
    assert manager.wait(60)
    (record,) = manager.status()

    assert record["state"] == JobState.COMPLETE.value, record["error"]
    assert not record["retention_pending"]
    assert server_sha256(server.upload_url, record["upload_id"]) == sha
    assert not bag.exists()
    moved = sorted((bag.parent / UPLOADED_DIR_NAME).glob("*")) if retention == "move" else []
    if retention == "move":
        assert [p.name for p in moved] == [bag.name]  # moved exactly once, not bag.1.mcap
        assert record["final_path"] == str(moved[0])
        assert local_sha256(moved[0]) == sha
    else:
        assert record["final_path"] is None
