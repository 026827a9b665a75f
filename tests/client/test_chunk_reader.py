"""Chunks are read once, hashed part by part as they are read, into buffers reused only after their chunk was sent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core.checksums import ChunkAlgorithm, ChunkChecksum, chunk_hasher
from core.client.chunk_reader import READ_PART, ChunkBuffers, read_hashed
from core.client.events import EventKind
from core.client.journal import JobState
from core.protocol import KiB
from tests.client.support import local_sha256, server_sha256

CHUNK = 256 * KiB


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * READ_PART + 12345)
    path = tmp_path / "bag.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 3 * READ_PART + 12345), (READ_PART - 7, READ_PART + 99), (3 * READ_PART, 12345), (5, 1)],
    ids=["whole file", "across parts", "last short part", "one byte"],
)
def test_read_hashed_fills_the_view_and_feeds_every_hasher_exactly_the_bytes_read(data_file, offset, length):
    path, data = data_file
    buffers = ChunkBuffers(4 * READ_PART)
    into = buffers.lend(length)
    sha, crc = hashlib.sha256(), chunk_hasher(ChunkAlgorithm.CRC32C)
    fd = os.open(path, os.O_RDONLY)
    try:
        read = read_hashed(fd, into, offset, [sha, crc])
    finally:
        os.close(fd)

    expected = data[offset : offset + length]
    assert read == length
    assert bytes(into) == expected
    assert sha.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert crc.hexdigest() == ChunkChecksum.of(ChunkAlgorithm.CRC32C, [expected]).hexdigest


def test_read_hashed_stops_at_the_end_of_the_file_and_hashes_only_what_was_there(data_file):
    path, data = data_file
    into = ChunkBuffers(4 * READ_PART).lend(2 * READ_PART)
    sha = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        read = read_hashed(fd, into, len(data) - 100, [sha])
    finally:
        os.close(fd)

    assert read == 100
    assert sha.hexdigest() == hashlib.sha256(data[-100:]).hexdigest()


def test_a_buffer_is_lent_again_only_after_it_was_given_back():
    buffers = ChunkBuffers(1024)
    first, second = buffers.lend(1024), buffers.lend(10)
    assert first.obj is not second.obj  # both lent at once: never the same bytes
    assert len(buffers) == 0

    buffers.give_back(first)
    third = buffers.lend(512)

    assert third.obj is first.obj
    assert len(third) == 512
    assert len(buffers) == 0


def test_give_back_refuses_a_view_it_did_not_lend_or_that_was_already_given_back():
    buffers = ChunkBuffers(1024)
    lent = buffers.lend(1024)
    buffers.give_back(lent)

    for view in (lent, memoryview(bytearray(1024)), memoryview(b"x" * 1024)):
        with pytest.raises(ValueError, match="this pool lent"):
            buffers.give_back(view)
    assert len(buffers) == 1  # no buffer is free twice, so none can be lent to two chunks at once


def test_a_chunk_larger_than_the_buffers_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        ChunkBuffers(1024).lend(1025)


@pytest.mark.gunicorn
@pytest.mark.parametrize("parallelism", [1, 3])
def test_reused_buffers_never_change_a_chunk_before_the_server_acknowledged_it(
    server, make_manager, make_file, events, monkeypatch, parallelism
):
    bag = make_file(40 * CHUNK + 1234)
    buffers: set[int] = set()
    lend = ChunkBuffers.lend

    def lend_and_note(self: ChunkBuffers, length: int) -> memoryview:
        view = lend(self, length)
        buffers.add(id(view.obj))
        return view

    monkeypatch.setattr(ChunkBuffers, "lend", lend_and_note)
    manager = make_manager(server.upload_url, chunk_size=CHUNK, chunk_parallelism=parallelism)
    job_id = manager.add_upload(bag)
    manager.start()
    assert manager.wait(60, job_ids=[job_id])
    record = manager.job(job_id)

    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)
    # A chunk overwritten while in flight fails its CRC-32C at the server and is retried (or the bag re-sent):
    # it would still end verified, so what tells is that nothing had to be repeated.
    assert events.of(EventKind.RETRY) == []
    assert len(buffers) <= parallelism + 1  # 41 chunks through a few buffers: each was reused many times
