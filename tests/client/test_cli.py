"""``python -m core.network_manager``: upload with a progress bar, exit status, and the queue listing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from core.protocol import MiB
from tests.client.support import local_sha256, server_sha256
from tests.helpers.processes import PYTHON, REPO_ROOT

pytestmark = pytest.mark.gunicorn


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "core.network_manager", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})  # fmt: skip


def test_upload_exits_zero_once_the_server_verified_the_bag(server, make_file, tmp_path):
    bag = make_file(2 * MiB)
    state = str(tmp_path / "state")

    done = run_cli("--state-dir", state, "upload", str(bag), "--url", server.upload_url, "--meta", "source=cli")
    listing = run_cli("--state-dir", state, "status")

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("complete")
    upload_id = line.split("upload ")[1].split()[0]
    assert server_sha256(server.upload_url, upload_id) == local_sha256(bag)
    assert "100%" in done.stderr  # the tqdm bar
    assert "complete" in listing.stdout
    assert str(bag) in listing.stdout


def test_upload_with_a_refused_key_exits_unfinished_naming_the_auth_block(tmp_path, make_file):
    from tests.helpers.servers import GunicornServer

    bag = make_file(64 * 1024)
    with GunicornServer(tmp_path / "uploads", workers=1, auth=True) as protected:
        refused = run_cli("--state-dir", str(tmp_path / "state"), "upload", str(bag), "--url", protected.upload_url,
                          "--max-retries", "1", env={"UPLOAD_API_KEY": "wrong-key"})  # fmt: skip

    # Not failed: a replaced key lets the next run (or the robot's uploader) continue; the journal keeps it.
    assert refused.returncode == 3
    assert refused.stdout.startswith("parked")
    assert "blocked: auth" in refused.stdout
    assert "401" in refused.stdout


def test_upload_of_a_missing_file_is_a_usage_error(tmp_path):
    missing = run_cli("--state-dir", str(tmp_path / "state"), "upload", str(tmp_path / "nope.mcap"), "--url",
                      "http://127.0.0.1:9/upload")  # fmt: skip

    assert missing.returncode == 2
    assert "not a file" in missing.stderr


def test_status_of_an_empty_journal_says_so(tmp_path):
    listing = run_cli("--state-dir", str(tmp_path / "state"), "status")

    assert listing.returncode == 0
    assert "no uploads" in listing.stdout


def test_failed_uploads_are_listed_retried_and_purged_from_the_command_line(tmp_path, make_file):
    from core.client.journal import JobState, Journal

    state = tmp_path / "state"
    journal = Journal(state)
    bags = [make_file(1024) for _ in range(3)]
    ids = []
    for bag in bags:
        record, _ = journal.add(bag, 5, {})
        journal.update(record.job_id, state=JobState.FAILED, error="init: HTTP 413 file_too_large", blocked="failed")
        ids.append(record.job_id)
    journal.close()

    listed = run_cli("--state-dir", str(state), "failed")
    retried = run_cli("--state-dir", str(state), "retry", ids[0][:8])
    ambiguous = run_cli("--state-dir", str(state), "retry", "")
    purged = run_cli("--state-dir", str(state), "purge", "--all")
    left = run_cli("--state-dir", str(state), "status", "--json")

    assert listed.returncode == 0
    assert all(job_id[:12] in listed.stdout for job_id in ids)
    assert "file_too_large" in listed.stdout
    assert retried.returncode == 0
    assert "1 failed upload(s) queued again" in retried.stdout
    assert ambiguous.returncode == 2
    assert "matches 2 failed uploads" in ambiguous.stderr
    assert "2 failed upload(s) purged" in purged.stdout
    (job,) = json.loads(left.stdout)
    assert (job["job_id"], job["state"]) == (ids[0], "queued")
    assert all(bag.exists() for bag in bags)  # purging forgets the entry, never the bag
