"""The client on a bad day: killed with -9, server restarted, link black-holed or cut mid-body.

Every scenario ends with the server's copy byte-identical to the source bag.
"""

from __future__ import annotations

import json
import random
import subprocess
import time

import pytest

from core.client.events import EventKind
from core.client.journal import JOURNAL_NAME, JobState, Journal
from core.protocol import MiB
from tests.client.support import local_sha256, server_sha256
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, wait_until
from tests.helpers.servers import GunicornServer

pytestmark = pytest.mark.gunicorn


def cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "core.network_manager", *args]


def journal_status(state_dir) -> list[dict]:
    out = subprocess.run(cli("--state-dir", str(state_dir), "status", "--json"), cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return json.loads(out)


def journaled_bytes(state_dir) -> int:
    """Acknowledged bytes of the only job, read straight from the journal (a reader never blocks the writer)."""
    if not (state_dir / JOURNAL_NAME).exists():
        return 0
    journal = Journal(state_dir)
    try:
        jobs = journal.jobs()
    finally:
        journal.close()
    return jobs[0].bytes_sent if jobs else 0


@pytest.mark.slow
def test_a_client_killed_with_sigkill_at_random_points_resumes_to_an_identical_copy(server, make_file, tmp_path):
    bag = make_file(12 * MiB)
    state_dir = tmp_path / "state"
    upload = cli("--state-dir", str(state_dir), "upload", str(bag), "--url", server.upload_url,
                 "--chunk-size", "256K", "--no-progress")  # fmt: skip
    rng = random.Random(4)
    sent_before_kill = []
    for round_ in range(4):
        client = ManagedProcess([*upload, "--bandwidth-limit", "6M"], log_path=tmp_path / f"client-{round_}.log")
        client.start()
        # A random point after this run got going (a loaded machine may need seconds just to start Python).
        before = sent_before_kill[-1] if sent_before_kill else 0
        wait_until(lambda: journaled_bytes(state_dir) > before, 60, 0.02, "this run to send a chunk")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.6))
        client.kill()
        sent_before_kill.append(journaled_bytes(state_dir))

    final = subprocess.run(upload, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr

    (job,) = journal_status(state_dir)
    assert job["state"] == JobState.COMPLETE.value
    assert server_sha256(server.upload_url, job["upload_id"]) == local_sha256(bag)
    # Progress survived the kills: later rounds started where earlier ones stopped.
    assert sent_before_kill == sorted(sent_before_kill)
    assert sent_before_kill[-1] > 0


def test_a_server_restart_mid_upload_is_survived(tmp_path, make_manager, make_file, events):
    bag = make_file(8 * MiB)
    with GunicornServer(tmp_path / "uploads", workers=2) as restarting:
        manager = make_manager(restarting.upload_url, bandwidth_limit=2 * MiB)
        job_id = manager.add_upload(bag)
        manager.start()
        events.wait_for(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent >= 1 * MiB)
        restarting.crash()
        state_while_down = manager.job(job_id).state
        time.sleep(0.5)
        restarting.start()
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)

        assert record.state is JobState.COMPLETE, record.error
        assert server_sha256(restarting.upload_url, record.upload_id) == local_sha256(bag)
    assert state_while_down is not JobState.COMPLETE
    assert events.of(EventKind.RETRY) or any(e.state is JobState.PARKED for e in events.events)


def test_a_black_holed_link_is_aborted_by_the_watchdog_and_retried(server, make_manager, make_file, events):
    bag = make_file(3 * MiB)
    with FaultProxy(server.port) as proxy:
        manager = make_manager(proxy.url + "/upload", bandwidth_limit=2 * MiB)
        manager.stalled_timeout = 1.0
        job_id = manager.add_upload(bag)
        manager.start()
        events.wait_for(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent >= 1 * MiB)
        proxy.pause()
        paused_at = time.monotonic()
        stalled = events.wait_for(lambda e: e.kind is EventKind.RETRY and "watchdog" in (e.error or ""), timeout=15)
        detected_after = time.monotonic() - paused_at
        proxy.resume()
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)

    assert stalled.job_id == job_id
    # Detected by the watchdog (stalled_timeout = 1 s), long before any socket timeout (init_timeout = 10 s).
    assert detected_after < 5
    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)


def test_a_connection_cut_in_the_middle_of_a_chunk_body_is_retried(server, make_manager, make_file, events):
    bag = make_file(2 * MiB)
    with FaultProxy(server.port) as proxy:
        proxy.drop_after_bytes = 100 * 1024  # inside the first 256 KiB chunk body

        def heal(event) -> None:
            if event.kind is EventKind.RETRY:
                proxy.drop_after_bytes = None

        events.hooks.append(heal)
        manager = make_manager(proxy.url + "/upload")
        job_id = manager.add_upload(bag)
        manager.start()
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)

    assert proxy.drops >= 1
    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)


def test_a_server_that_is_down_parks_the_upload_and_it_completes_later(tmp_path, make_manager, make_file, events):
    bag = make_file(1 * MiB)
    down = GunicornServer(tmp_path / "uploads", workers=1)
    manager = make_manager(down.upload_url)
    manager.max_retries = 1
    job_id = manager.add_upload(bag)
    manager.start()
    events.wait_for(lambda e: e.state is JobState.PARKED)
    assert not manager.wait(0.1, job_ids=[job_id])

    with down:  # starts it
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)
        assert record.state is JobState.COMPLETE, record.error
        assert server_sha256(down.upload_url, record.upload_id) == local_sha256(bag)
