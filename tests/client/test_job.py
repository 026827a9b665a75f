"""One upload's decisions against canned server replies: verification gates retention, 410 restarts, 429 waits."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import responses

from core.checksums import ChunkChecksum, file_digests, sha256_hex
from core.client.bandwidth import TokenBucket
from core.client.chunk_sizing import PieceSizer
from core.client.errors import TransientUploadError
from core.client.events import EventBus
from core.client.job import MAX_REINITS, JobSettings, UploadJob
from core.client.journal import JobState, Journal
from core.client.retention import Retention
from core.client.transfer import ServerClient
from core.client.watchdog import Watchdog
from core.protocol import (
    CHUNK_CHECKSUM_HEADERS,
    FEATURE_CHUNK_CRC32C,
    FEATURE_FINALIZE_SHA256,
    HEADER_CHUNK_OFFSET,
    HEADER_RETRY_AFTER,
    ChunkAlgorithm,
    chunk_url,
    finalize_url,
    init_url,
    upload_status_url,
)
from tests.client.support import init_reply

URL = "http://robot-test.invalid:8080/upload"
CHUNK = 64 * 1024


@pytest.fixture
def bag(make_file) -> Path:
    return make_file(3 * CHUNK)


@pytest.fixture
def run_job(tmp_path: Path, bag: Path):
    journal = Journal(tmp_path / "state")
    sleeps: list[float] = []

    def run(
        retention: Retention = Retention.KEEP, listener=None, client: ServerClient | None = None, **settings
    ) -> UploadJob:
        record, _ = journal.add(bag, 1, {"source": "robot1"})
        events = EventBus()
        if listener is not None:
            events.add(listener)
        options = {"chunk_size": CHUNK, "retention": retention, "max_retries": 2, **settings}
        job = UploadJob(
            record,
            journal=journal,
            client=client or ServerClient(URL),
            settings=lambda: JobSettings(**options),
            bucket=TokenBucket(0),
            watchdog=Watchdog(),
            events=events,
            stopping=threading.Event(),
            sleep=sleeps.append,
        )
        job.sleeps = sleeps  # type: ignore[attr-defined]
        job.run()
        return job

    return run


def serve_upload(upload_id: str, bag: Path, *, final_sha256: str | None = None, verified: bool = True) -> None:
    """Register replies of a server that accepts everything and then reports ``final_sha256``."""
    sha = file_digests(bag).sha256 if final_sha256 is None else final_sha256
    for index in range(3):
        responses.put(chunk_url(URL, upload_id, index), json={"success": True})
    responses.post(finalize_url(URL, upload_id), status=202, json={"success": True, "state": "finalizing"})
    responses.get(upload_status_url(URL, upload_id), json={"state": "finalizing", "received": [0, 1, 2]})
    responses.get(
        upload_status_url(URL, upload_id),
        json={"state": "complete", "verified": verified, "sha256": sha, "codec": "none"},
    )


@responses.activate
@pytest.mark.parametrize(
    ("features", "algorithm"),
    [
        pytest.param((FEATURE_FINALIZE_SHA256,), ChunkAlgorithm.SHA256, id="older-server-sha256"),
        pytest.param((FEATURE_FINALIZE_SHA256, FEATURE_CHUNK_CRC32C), ChunkAlgorithm.CRC32C, id="crc32c"),
    ],
)
def test_a_verified_upload_with_our_sha256_completes_and_applies_retention(run_job, bag, features, algorithm):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK, features=features))
    serve_upload("u1", bag)
    data = bag.read_bytes()

    job = run_job(Retention.DELETE)

    assert job.record.state is JobState.COMPLETE
    assert not bag.exists()
    chunk_calls = [c for c in responses.calls if c.request.method == "PUT"]
    expected = [ChunkChecksum.of(algorithm, (data[i * CHUNK : (i + 1) * CHUNK],)) for i in range(3)]
    assert [dict(c.request.headers).get(e.header) for c, e in zip(chunk_calls, expected, strict=True)] == [
        e.hexdigest for e in expected
    ]
    other = CHUNK_CHECKSUM_HEADERS[
        ChunkAlgorithm.CRC32C if algorithm is ChunkAlgorithm.SHA256 else ChunkAlgorithm.SHA256
    ]
    assert not any(other in c.request.headers for c in chunk_calls)


@responses.activate
@pytest.mark.parametrize(("sha", "verified"), [("0" * 64, True), (None, False)], ids=["other-sha256", "unverified"])
def test_a_copy_the_server_did_not_verify_as_ours_is_resent_and_the_bag_stays(run_job, bag, sha, verified):
    for round_ in range(MAX_REINITS):  # a new upload each time, as a real server answers an init
        upload_id = f"u{round_}"
        responses.post(init_url(URL), status=201, json=init_reply(upload_id, CHUNK))
        serve_upload(upload_id, bag, final_sha256=sha, verified=verified)
        # The detail fetch after a brief "complete" says the same.
        responses.get(
            upload_status_url(URL, upload_id), json={"state": "complete", "verified": verified, "sha256": sha}
        )

    with pytest.raises(TransientUploadError, match="start over"):
        run_job(Retention.DELETE)

    assert bag.exists()
    inits = [c for c in responses.calls if c.request.url == init_url(URL)]
    assert len(inits) == MAX_REINITS  # each round re-hashed the bag and asked for a new upload


@responses.activate
def test_an_expired_upload_is_started_over_with_a_new_init(run_job, bag):
    responses.post(init_url(URL), status=201, json=init_reply("old", CHUNK))
    gone = {"success": False, "error": {"code": "upload_expired", "message": "gone"}}
    responses.put(chunk_url(URL, "old", 0), status=410, json=gone)
    responses.post(init_url(URL), status=201, json=init_reply("new", CHUNK))
    serve_upload("new", bag)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    assert job.record.upload_id == "new"


@responses.activate
def test_a_rate_limited_chunk_waits_for_retry_after_then_continues(run_job, bag):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    responses.put(
        chunk_url(URL, "u1", 0),
        status=429,
        headers={HEADER_RETRY_AFTER: "12"},
        json={"success": False, "error": {"code": "rate_limited", "message": "slow down"}},
    )
    serve_upload("u1", bag)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    assert 12.0 in job.sleeps  # type: ignore[attr-defined]


@responses.activate
def test_a_resumed_upload_sends_only_the_missing_chunks(tmp_path, run_job, bag):
    responses.post(init_url(URL), status=201, json={**init_reply("u1", CHUNK), "received": [0, 2]})
    serve_upload("u1", bag)

    run_job()

    sent = [c.request.url for c in responses.calls if c.request.method == "PUT"]
    assert sent == [chunk_url(URL, "u1", 1)]
    # The chunks the server had were read to hash them, not sent again.
    assert finalize_bodies() == [{"sha256": sha256_hex(bag.read_bytes())}]


def finalize_bodies() -> list[object]:
    return [json.loads(c.request.body) for c in responses.calls if c.request.url.endswith("/finalize")]


@responses.activate
@pytest.mark.parametrize("parallelism", [1, 3])
def test_the_bag_is_read_once_and_its_sha256_is_declared_at_finalize(run_job, bag, monkeypatch, parallelism):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_upload("u1", bag)
    read: list[int] = []
    pread, preadv = os.pread, os.preadv
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: read.append(n) or pread(fd, n, offset))
    monkeypatch.setattr(
        os, "preadv", lambda fd, buffers, offset: read.append(sum(map(len, buffers))) or preadv(fd, buffers, offset)
    )

    job = run_job(chunk_parallelism=parallelism)

    assert job.record.state is JobState.COMPLETE
    assert sum(read) == bag.stat().st_size  # each chunk read once, for its hash, the file's and the wire
    init = json.loads(responses.calls[0].request.body)
    assert "checksum" not in init
    assert "sha256" not in init  # nothing is known before sending
    assert finalize_bodies() == [{"sha256": sha256_hex(bag.read_bytes())}]
    assert job.record.sha256 == sha256_hex(bag.read_bytes())


@responses.activate
@pytest.mark.parametrize("server_state", ["failed", "aborted"])
def test_a_server_failed_or_expired_upload_is_rehashed_and_sent_as_a_new_upload(run_job, bag, server_state):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    for index in range(3):
        responses.put(chunk_url(URL, "u1", index), json={"success": True})
    responses.post(finalize_url(URL, "u1"), status=202, json={"success": True})
    responses.get(upload_status_url(URL, "u1"), json={"state": server_state, "error": "disk full at finalize"})
    responses.post(init_url(URL), status=201, json=init_reply("u2", CHUNK))
    serve_upload("u2", bag)
    hashed: list[JobState] = []

    job = run_job(Retention.DELETE, listener=lambda e: hashed.append(e.state))

    assert job.record.state is JobState.COMPLETE
    assert job.record.upload_id == "u2"
    assert hashed.count(JobState.HASHING) == 2  # hashed again before the new init
    assert not bag.exists()


@responses.activate
def test_a_server_that_refuses_chunk_pieces_gets_whole_chunks(run_job, bag):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    older = {"success": False, "error": {"code": "chunk_size_mismatch", "message": "chunk 0 must be 65536 bytes"}}
    responses.put(chunk_url(URL, "u1", 0), status=400, json=older)  # it ignores X-Chunk-Offset
    serve_upload("u1", bag)
    client = ServerClient(URL, sizer=PieceSizer(minimum=CHUNK // 4))
    client.sizer.failed(4 * CHUNK, CHUNK)  # the link broke after carrying 256 KiB: pieces of 32 KiB next
    assert client.sizer.piece(0, CHUNK) == CHUNK // 2

    job = run_job(client=client)

    assert job.record.state is JobState.COMPLETE
    puts = [c.request for c in responses.calls if c.request.method == "PUT"]
    assert HEADER_CHUNK_OFFSET in puts[0].headers
    assert [HEADER_CHUNK_OFFSET in p.headers for p in puts[1:]] == [False, False, False]
    assert client.sizer.pieces_supported is False


@responses.activate
def test_an_init_resumed_onto_an_upload_the_server_holds_whole_hashes_the_bag_before_trusting_verified(run_job, bag):
    """Resumed by fingerprint onto an upload already finalizing: "verified" is compared with our own sha256."""
    responses.post(init_url(URL), status=200, json={**init_reply("u1", CHUNK), "state": "finalizing", "resumed": True})
    responses.get(upload_status_url(URL, "u1"), json={"state": "finalizing", "received": [0, 1, 2]})
    responses.get(
        upload_status_url(URL, "u1"),
        json={"state": "complete", "verified": True, "sha256": "0" * 64, "codec": "none"},  # another file's copy
    )

    # The bag was hashed although nothing was sent; the server's copy is not ours, so the bag stays.
    with pytest.raises(TransientUploadError, match=f"differs from local {sha256_hex(bag.read_bytes())}"):
        run_job(Retention.DELETE)

    assert bag.exists()
    assert not [c for c in responses.calls if c.request.method == "PUT"]


@responses.activate
def test_a_dedup_candidate_is_hashed_and_finalized_before_any_chunk_is_sent(run_job, bag):
    sha = sha256_hex(bag.read_bytes())
    responses.post(init_url(URL), status=201, json={**init_reply("u1", CHUNK), "dedup_candidate": True})
    responses.post(finalize_url(URL, "u1"), json={"success": True, "state": "complete", "verified": True})
    responses.get(
        upload_status_url(URL, "u1"),
        json={"state": "complete", "verified": True, "sha256": sha, "codec": "none", "deduplicated": True},
    )

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    assert not [c for c in responses.calls if c.request.method == "PUT"]
    assert finalize_bodies() == [{"sha256": sha}]


@responses.activate
def test_a_server_without_finalize_sha256_gets_the_checksums_at_init(run_job, bag):
    older = {k: v for k, v in init_reply("u1", CHUNK).items() if k != "features"}
    responses.post(init_url(URL), status=201, json=older)
    responses.delete(upload_status_url(URL, "u1"), json={"success": True, "state": "aborted"})
    responses.post(init_url(URL), status=201, json={**older, "upload_id": "u2"})
    serve_upload("u2", bag)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    inits = [json.loads(c.request.body) for c in responses.calls if c.request.url == init_url(URL)]
    assert "sha256" not in inits[0]
    assert inits[1]["sha256"] == sha256_hex(bag.read_bytes())
    assert inits[1]["checksum"] == hashlib.md5(bag.read_bytes(), usedforsecurity=False).hexdigest()
    assert [c.request.method for c in responses.calls if c.request.url == upload_status_url(URL, "u1")] == ["DELETE"]


@responses.activate
def test_an_init_that_resumes_an_upload_that_failed_us_is_redone_by_sha256(run_job, bag):
    """Same name, size and edges (fingerprint) but another file's upload: the sha256 tells them apart."""
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_upload("u1", bag, final_sha256="0" * 64)  # the copy verifies as another file
    responses.post(init_url(URL), status=200, json={**init_reply("u1", CHUNK), "resumed": True})
    responses.post(init_url(URL), status=201, json=init_reply("u2", CHUNK))
    serve_upload("u2", bag)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    assert job.record.upload_id == "u2"
    inits = [json.loads(c.request.body) for c in responses.calls if c.request.url == init_url(URL)]
    assert ["sha256" in body for body in inits] == [False, False, True]


def progress_saves(monkeypatch) -> list[dict]:
    """The journal writes made while the job runs, as their changed columns."""
    saves: list[dict] = []
    update = Journal.update
    monkeypatch.setattr(
        Journal, "update", lambda self, job_id, **changes: saves.append(changes) or update(self, job_id, **changes)
    )
    return saves


@responses.activate
def test_progress_alone_is_journaled_at_most_once_a_second_and_in_full_at_the_end(run_job, bag, monkeypatch):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    serve_upload("u1", bag)
    saves = progress_saves(monkeypatch)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    only_progress = [
        s for s in saves if set(s) == {"attempts", "parks", "error", "blocked", "blocked_until", "bytes_sent"}
    ]
    assert only_progress == []  # three chunks in well under PROGRESS_SAVE_INTERVAL: none written for progress alone
    assert job.journal.get(job.record.job_id).bytes_sent == bag.stat().st_size


@responses.activate
def test_progress_after_a_retry_clears_the_error_in_the_journal_at_once(run_job, bag, monkeypatch):
    responses.post(init_url(URL), status=201, json=init_reply("u1", CHUNK))
    responses.put(chunk_url(URL, "u1", 0), status=503, json={"success": False})
    serve_upload("u1", bag)
    saves = progress_saves(monkeypatch)

    job = run_job()

    assert job.record.state is JobState.COMPLETE
    failed = next(i for i, s in enumerate(saves) if s.get("attempts") == 1)
    assert saves[failed + 1]["attempts"] == 0  # the chunk that then went through was journaled with the reset
    assert saves[failed + 1]["error"] is None
    assert saves[failed + 1]["bytes_sent"] == CHUNK
