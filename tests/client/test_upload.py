"""The upload client against a real gunicorn upload server: every bag ends byte-identical on the server."""

from __future__ import annotations

import os

import pytest
import requests

from core.client.events import EventKind
from core.client.journal import JobState
from core.network_manager import NetworkManager
from core.protocol import MiB, upload_status_url
from tests.client.support import EventLog, local_sha256, server_sha256
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.servers import GunicornServer

pytestmark = pytest.mark.gunicorn


def finished(manager: NetworkManager, job_id: str, timeout: float = 60.0):
    assert manager.wait(timeout, job_ids=[job_id]), f"upload {job_id} did not end: {manager.job(job_id)}"
    return manager.job(job_id)


def assert_identical_on_server(server: GunicornServer, record, source_sha256: str) -> None:
    assert record.state is JobState.COMPLETE, record.error
    assert record.sha256 == source_sha256
    assert server_sha256(server.upload_url, record.upload_id) == source_sha256


@pytest.mark.parametrize(
    ("size", "compressible"),
    [
        pytest.param(0, False, id="empty"),
        pytest.param(1, False, id="one-byte"),
        pytest.param(3 * MiB + 17, False, id="random-uneven-chunks"),
        pytest.param(12 * MiB, True, id="compressible"),
    ],
)
def test_an_uploaded_bag_is_byte_identical_on_the_server(server, make_manager, make_file, size, compressible):
    bag = make_file(size, compressible=compressible)
    manager = make_manager(server.upload_url)
    job_id = manager.add_upload(bag, priority=1, metadata={"source": "robot1"})
    manager.start()

    record = finished(manager, job_id)

    assert_identical_on_server(server, record, local_sha256(bag))
    assert record.compression is compressible
    assert bag.exists()


def test_compression_is_requested_only_for_data_that_shrinks(server, make_manager, make_file):
    shrinks, does_not = make_file(12 * MiB, compressible=True), make_file(12 * MiB)
    manager = make_manager(server.upload_url)
    ids = [manager.add_upload(shrinks), manager.add_upload(does_not)]
    manager.start()
    assert manager.wait(60)

    first, second = (manager.job(i) for i in ids)

    assert (first.compression, second.compression) == (True, False)
    assert first.stored_size < first.size
    assert second.codec == "none"


def test_events_report_progress_and_end_with_a_verified_completion(server, make_manager, make_file, events: EventLog):
    bag = make_file(2 * MiB)
    manager = make_manager(server.upload_url)
    job_id = manager.add_upload(bag)
    manager.start()
    finished(manager, job_id)

    mine = [e for e in events.events if e.job_id == job_id]
    states = [e.state for e in mine if e.kind is EventKind.STATE]
    progress = [e.bytes_sent for e in mine if e.kind is EventKind.PROGRESS]

    assert states == [
        JobState.QUEUED,
        JobState.HASHING,
        JobState.INITIALIZING,
        JobState.UPLOADING,
        JobState.FINALIZING,
        JobState.COMPLETE,
    ]
    assert progress == sorted(progress)
    assert progress[-1] == bag.stat().st_size
    assert mine[-1].verified
    assert [e for e in mine if e.verified] == [mine[-1]]


@pytest.mark.parametrize("retention", ["delete", "move"])
def test_retention_frees_the_bag_only_after_a_verified_upload(server, make_manager, make_file, tmp_path, retention):
    bag = make_file(1 * MiB)
    source = local_sha256(bag)
    manager = make_manager(server.upload_url, retention=retention, uploaded_dir=tmp_path / "uploaded")
    job_id = manager.add_upload(bag)
    manager.start()

    record = finished(manager, job_id)

    assert_identical_on_server(server, record, source)
    assert not bag.exists()
    if retention == "move":
        assert local_sha256(tmp_path / "uploaded" / bag.name) == source


def test_lower_priority_numbers_upload_first_and_ties_keep_arrival_order(server, make_manager, make_file, events):
    manager = make_manager(server.upload_url, max_concurrent_uploads=1)
    queued = {manager.add_upload(make_file(64 * 1024, name=f"{name}.mcap"), priority=p): name
              for name, p in [("c", 5), ("a", 1), ("d", 5), ("b", 1), ("e", 9)]}  # fmt: skip
    manager.start()
    assert manager.wait(60)

    started = [queued[e.job_id] for e in events.of(EventKind.STATE) if e.state is JobState.HASHING]

    assert started == ["a", "b", "c", "d", "e"]


def test_resume_sends_only_the_chunks_the_server_lacks(server, make_manager, make_file, events):
    bag = make_file(4 * MiB)
    with FaultProxy(server.port) as proxy:
        first = make_manager(proxy.url + "/upload", bandwidth_limit=4 * MiB)
        job_id = first.add_upload(bag)
        first.start()
        events.wait_for(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent >= 2 * MiB)
        first.stop(timeout=0)
        stopped = first.job(job_id)
        acked = stopped.bytes_sent
        assert stopped.state is JobState.UPLOADING  # stopped, not failed: resumable

        second = make_manager(proxy.url + "/upload")
        second.start()
        record = finished(second, job_id)

    assert 0 < acked < bag.stat().st_size
    assert_identical_on_server(server, record, local_sha256(bag))
    # Everything acknowledged before the stop was not sent again (one chunk may have been cut mid-way).
    assert proxy.bytes_up < 2 * bag.stat().st_size - acked + 2 * 256 * 1024


def test_a_running_jobs_progress_is_seen_before_the_journal_has_it(server, make_manager, make_file, events):
    """Progress alone reaches the journal at most once a second; ``job()`` of a running job is its live record."""
    bag = make_file(8 * 256 * 1024)
    manager = make_manager(server.upload_url, chunk_size=256 * 1024, chunk_parallelism=1)
    seen: list[int] = []

    def look(event) -> None:  # runs in the sending thread, right after the chunk's bookkeeping
        if event.kind is EventKind.PROGRESS and event.bytes_sent >= 2 * 256 * 1024 and not seen:
            seen.append(manager.job(job_id).bytes_sent)

    events.hooks.append(look)
    job_id = manager.add_upload(bag)
    manager.start()
    assert manager.wait(60, job_ids=[job_id])

    assert manager.job(job_id).state is JobState.COMPLETE
    assert len(seen) == 1
    assert seen[0] >= 256 * 1024  # one stream: with two chunks' bytes sent, the first was acknowledged


def test_an_upload_the_server_forgot_starts_over(server, make_manager, make_file, events):
    bag = make_file(2 * MiB)
    first = make_manager(server.upload_url, bandwidth_limit=2 * MiB)
    job_id = first.add_upload(bag)
    first.start()
    events.wait_for(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent >= 512 * 1024)
    first.stop(timeout=0)
    old_upload = first.job(job_id).upload_id
    requests.delete(upload_status_url(server.upload_url, old_upload), timeout=10).raise_for_status()

    second = make_manager(server.upload_url)
    second.start()
    record = finished(second, job_id)

    assert record.upload_id != old_upload
    assert_identical_on_server(server, record, local_sha256(bag))


def test_a_bag_the_server_already_has_completes_without_sending_it_again(server, make_manager, make_file, tmp_path):
    """Init's fingerprint finds the stored copy; the bag is hashed and finalize links to it: no chunk is sent."""
    bag = make_file(3 * MiB)
    copy = tmp_path / "copy-of-bag.mcap"
    copy.write_bytes(bag.read_bytes())
    manager = make_manager(server.upload_url)
    manager.start()
    finished(manager, manager.add_upload(bag))

    with FaultProxy(server.port) as proxy:
        again = make_manager(proxy.url + "/upload", state_dir=tmp_path / "other-state")
        again.start()
        record = finished(again, again.add_upload(copy))

    assert_identical_on_server(server, record, local_sha256(copy))
    assert proxy.bytes_up < 64 * 1024
    assert requests.get(upload_status_url(server.upload_url, record.upload_id), timeout=10).json()["deduplicated"]


def test_a_chunk_corrupted_on_the_way_fails_its_crc32c_and_is_sent_again(server, make_manager, make_file, caplog):
    """The server checks each chunk's X-Chunk-CRC32C before acknowledging it; the client resends the one refused."""
    bag = make_file(12 * MiB)
    with FaultProxy(server.port) as proxy:
        manager = make_manager(proxy.url + "/upload", chunk_size=8 * MiB)
        proxy.flip_after(4 * MiB)  # inside a chunk body, far from any request's headers
        manager.start()
        record = finished(manager, manager.add_upload(bag))

    assert proxy.flips == 1
    assert_identical_on_server(server, record, local_sha256(bag))
    assert "does not match its X-Chunk-CRC32C" in caplog.text


@pytest.fixture(scope="module")
def older_server(tmp_path_factory: pytest.TempPathFactory):
    """The server as a release without FEATURE_FINALIZE_SHA256 answers (tests/helpers/older_server.py)."""
    root = tmp_path_factory.mktemp("older")
    with GunicornServer(root / "uploads", workers=1, app="tests.helpers.older_server:app") as srv:
        yield srv


def test_a_server_that_ignores_the_finalize_sha256_gets_the_checksums_at_init(older_server, make_manager, make_file):
    bags = [make_file(3 * MiB + 5), make_file(MiB)]
    manager = make_manager(older_server.upload_url)
    ids = [manager.add_upload(bag) for bag in bags]
    manager.start()

    for job_id, bag in zip(ids, bags, strict=True):
        record = finished(manager, job_id)
        assert_identical_on_server(older_server, record, local_sha256(bag))
        assert record.md5 is not None  # the seed's checksum, declared at init
        status = requests.get(upload_status_url(older_server.upload_url, record.upload_id), timeout=10).json()
        assert status["verified"] is True


def test_a_bag_deleted_before_upload_fails_with_a_reason(server, make_manager, make_file):
    bag = make_file(1024)
    manager = make_manager(server.upload_url)
    job_id = manager.add_upload(bag)
    bag.unlink()
    manager.start()

    record = finished(manager, job_id)

    assert record.state is JobState.FAILED
    assert "disappeared" in record.error


def test_add_upload_refuses_what_is_not_a_file(server, make_manager, tmp_path):
    manager = make_manager(server.upload_url)

    with pytest.raises(FileNotFoundError):
        manager.add_upload(tmp_path / "no-such.mcap")
    with pytest.raises(FileNotFoundError):
        manager.add_upload(tmp_path)


def test_a_permanent_server_refusal_fails_the_upload_and_keeps_the_bag(tmp_path, make_manager, make_file):
    bag = make_file(2 * MiB)
    with GunicornServer(tmp_path / "small", workers=1, env={"MAX_FILE_SIZE": "1MiB"}) as small:
        manager = make_manager(small.upload_url, retention="delete")
        job_id = manager.add_upload(bag)
        manager.start()
        record = finished(manager, job_id)

    assert record.state is JobState.FAILED
    assert "413" in record.error or "too_large" in record.error
    assert record.attempts == 0
    assert bag.exists()


def test_the_journal_lives_in_the_state_dir_from_the_environment(server, make_file, tmp_path, monkeypatch):
    monkeypatch.setenv("NETWORK_MANAGER_STATE_DIR", os.fspath(tmp_path / "from-env"))
    manager = NetworkManager(upload_url=server.upload_url)
    try:
        manager.add_upload(make_file(10))
    finally:
        manager.close()

    assert (tmp_path / "from-env" / "journal.sqlite3").exists()


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory):
    """A server that requires API keys (a robot key and an admin key exist)."""
    with GunicornServer(tmp_path_factory.mktemp("protected") / "uploads", workers=1, auth=True) as srv:
        yield srv


def test_with_auth_on_the_robot_key_uploads_a_verified_bag(protected, make_manager, make_file):
    bag = make_file(1 * MiB)
    manager = make_manager(protected.upload_url, api_key=protected.robot_key)
    job_id = manager.add_upload(bag)
    manager.start()

    record = finished(manager, job_id)

    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(protected.upload_url, record.upload_id, protected.admin_key) == local_sha256(bag)


def test_the_api_key_comes_from_the_environment(protected, make_manager, make_file, monkeypatch):
    monkeypatch.setenv("UPLOAD_API_KEY", protected.robot_key)
    bag = make_file(64 * 1024)
    manager = make_manager(protected.upload_url)
    job_id = manager.add_upload(bag)
    manager.start()

    assert finished(manager, job_id).state is JobState.COMPLETE


def test_a_wrong_key_blocks_the_upload_as_auth_and_the_replaced_key_finishes_it(
    protected, make_manager, make_file, events, tmp_path
):
    bag = make_file(64 * 1024)
    source = local_sha256(bag)
    manager = make_manager(protected.upload_url, api_key="not-a-key", retention="delete")
    job_id = manager.add_upload(bag)
    manager.start()
    events.wait_for(lambda e: e.state is JobState.PARKED, timeout=60)
    blocked = manager.job(job_id)
    manager.close()

    # The robot restarts with the replaced key: the same journaled upload goes through.
    replaced = make_manager(protected.upload_url, api_key=protected.robot_key, retention="delete")
    replaced.start()
    record = finished(replaced, job_id)

    assert blocked.state is JobState.PARKED
    assert blocked.blocked == "auth"
    assert "401" in (blocked.error or "")
    assert record.state is JobState.COMPLETE
    assert server_sha256(protected.upload_url, record.upload_id, protected.robot_key) == source
    assert not bag.exists()  # deleted only after the verified copy
