"""Per-chunk checksums: X-Chunk-SHA256 or the cheaper X-Chunk-CRC32C, each checked before a chunk is acknowledged.

The chunk check catches corruption early, so one chunk is resent instead of the whole bag failing at
finalize; the whole-file sha256 checked at finalize is what "verified" means, whichever check the
chunks had.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.checksums import ChunkChecksum
from core.protocol import (
    FEATURE_CHUNK_CRC32C,
    HEADER_CHUNK_CRC32C,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_PIECE_CRC32C,
    MIN_PIECE_SIZE,
    ChunkAlgorithm,
)
from tests.server.conftest import CHUNK
from tests.server.uploads import Upload, assert_error

ALGORITHMS = list(ChunkAlgorithm)


@pytest.fixture
def upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(3 * CHUNK + 100))
    upload.init()
    return upload


def part_bytes(upload_dir: Path, upload: Upload) -> bytes:
    return (upload_dir / "parts" / f"{upload.upload_id}.part").read_bytes()


def test_crc32c_is_the_castagnoli_polynomial() -> None:
    """The check value of CRC-32C (RFC 3720 B.4, as S3's x-amz-checksum-crc32c) for b"123456789"."""
    assert ChunkChecksum.of(ChunkAlgorithm.CRC32C, (b"1234", memoryview(b"56789"))).hexdigest == "e3069283"


def test_the_server_lists_crc32c_chunks_among_its_features(client: FlaskClient, upload: Upload) -> None:
    assert FEATURE_CHUNK_CRC32C in client.get("/health").get_json()["features"]
    assert FEATURE_CHUNK_CRC32C in upload.reply["features"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_chunk_with_its_checksum_is_stored(upload: Upload, upload_dir: Path, algorithm: ChunkAlgorithm) -> None:
    for index in range(upload.chunks):
        assert upload.send(index, algorithm=algorithm).status_code == 201

    assert upload.status()["missing"] == []
    assert part_bytes(upload_dir, upload) == upload.data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_chunk_that_does_not_match_its_checksum_is_refused_and_not_recorded(
    upload: Upload, upload_dir: Path, algorithm: ChunkAlgorithm
) -> None:
    upload.send(0, algorithm=algorithm)
    corrupted = bytearray(upload.piece(1))
    corrupted[len(corrupted) // 2] ^= 0x01
    claimed = ChunkChecksum.of(algorithm, (upload.piece(1),))

    reply = upload.send(1, bytes(corrupted), algorithm=None, **{claimed.header: claimed.hexdigest})

    assert assert_error(reply, 400, "checksum_mismatch")["header"] == claimed.header
    assert upload.status()["received"] == [0]
    assert part_bytes(upload_dir, upload)[CHUNK : 2 * CHUNK] != bytes(corrupted)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("e306928", id="7-digits"),
        pytest.param("e30692830", id="9-digits"),
        pytest.param("xyz06928", id="hex"),
    ],
)
def test_a_malformed_crc32c_is_a_clear_400(upload: Upload, value: str) -> None:
    reply = upload.send(0, algorithm=None, **{HEADER_CHUNK_CRC32C: value})

    assert assert_error(reply, 400, "invalid_field")["field"] == HEADER_CHUNK_CRC32C


def test_a_chunk_naming_both_checksums_is_refused(upload: Upload) -> None:
    """Two checksums would leave one of them a claim nobody checks."""
    crc = ChunkChecksum.of(ChunkAlgorithm.CRC32C, (upload.piece(0),))

    reply = upload.send(0, algorithm=ChunkAlgorithm.SHA256, **{HEADER_CHUNK_CRC32C: crc.hexdigest})

    assert_error(reply, 400, "invalid_field")
    assert upload.status()["received"] == []


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (ChunkAlgorithm.SHA256, ChunkAlgorithm.CRC32C),
        (ChunkAlgorithm.CRC32C, ChunkAlgorithm.SHA256),
        (None, ChunkAlgorithm.SHA256),
        (None, ChunkAlgorithm.CRC32C),
    ],
)
def test_a_resend_under_the_other_checksum_is_told_apart_from_different_bytes(
    upload: Upload, upload_dir: Path, first: ChunkAlgorithm | None, again: ChunkAlgorithm
) -> None:
    assert upload.send(0, algorithm=first).status_code == 201

    same = upload.send(0, algorithm=again)
    different = upload.send(0, os.urandom(CHUNK), algorithm=again)

    assert same.status_code == 200
    assert same.get_json()["duplicate"] is True
    assert_error(different, 409, "conflict")
    assert part_bytes(upload_dir, upload)[:CHUNK] == upload.piece(0)


def put_piece(upload: Upload, offset: int, length: int, *, chunk: ChunkChecksum, body: bytes | None = None) -> Any:
    """Bytes [offset, offset + length) of chunk 0 with their crc32c; ``body`` is sent in their place."""
    intended = upload.piece(0)[offset : offset + length]
    data = intended if body is None else body
    piece = ChunkChecksum.of(ChunkAlgorithm.CRC32C, (intended,))
    headers = {HEADER_CHUNK_OFFSET: str(offset), HEADER_PIECE_CRC32C: piece.hexdigest, chunk.header: chunk.hexdigest}
    return upload.client.put(f"/upload/{upload.upload_id}/chunk/0", data=data, headers=headers)


@pytest.fixture
def piece_upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(4 * MIN_PIECE_SIZE + 10), chunk_size=4 * MIN_PIECE_SIZE)
    upload.init()
    return upload


@pytest.mark.parametrize("chunk_algorithm", ALGORITHMS)
def test_pieces_checked_by_crc32c_complete_a_chunk_checked_as_stored(
    piece_upload: Upload, chunk_algorithm: ChunkAlgorithm
) -> None:
    chunk = ChunkChecksum.of(chunk_algorithm, (piece_upload.piece(0),))

    first = put_piece(piece_upload, 0, MIN_PIECE_SIZE, chunk=chunk)
    last = put_piece(piece_upload, MIN_PIECE_SIZE, 3 * MIN_PIECE_SIZE, chunk=chunk)
    again = put_piece(
        piece_upload,
        MIN_PIECE_SIZE,
        3 * MIN_PIECE_SIZE,
        chunk=ChunkChecksum.of(
            ChunkAlgorithm.SHA256 if chunk_algorithm is ChunkAlgorithm.CRC32C else ChunkAlgorithm.CRC32C,
            (piece_upload.piece(0),),
        ),
    )

    assert (first.status_code, first.get_json()["chunk_complete"]) == (201, False)
    assert (last.status_code, last.get_json()["chunk_complete"]) == (201, True)
    assert (again.status_code, again.get_json()["duplicate"]) == (200, True)
    assert piece_upload.status()["received"] == [0]


def test_a_piece_that_does_not_match_its_crc32c_is_refused(piece_upload: Upload) -> None:
    chunk = ChunkChecksum.of(ChunkAlgorithm.CRC32C, (piece_upload.piece(0),))

    reply = put_piece(piece_upload, 0, MIN_PIECE_SIZE, chunk=chunk, body=os.urandom(MIN_PIECE_SIZE))

    assert assert_error(reply, 400, "checksum_mismatch")["header"] == HEADER_PIECE_CRC32C


def test_a_chunk_whose_stored_pieces_do_not_match_its_crc32c_is_not_acknowledged(piece_upload: Upload) -> None:
    wrong = ChunkChecksum.of(ChunkAlgorithm.CRC32C, (os.urandom(4 * MIN_PIECE_SIZE),))

    put_piece(piece_upload, 0, MIN_PIECE_SIZE, chunk=wrong)
    reply = put_piece(piece_upload, MIN_PIECE_SIZE, 3 * MIN_PIECE_SIZE, chunk=wrong)

    assert assert_error(reply, 400, "checksum_mismatch")["header"] == HEADER_CHUNK_CRC32C
    assert piece_upload.status()["received"] == []


def test_a_piece_without_its_chunk_checksum_names_both_choices(piece_upload: Upload) -> None:
    data = piece_upload.piece(0)[:MIN_PIECE_SIZE]
    headers = {
        HEADER_CHUNK_OFFSET: "0",
        HEADER_PIECE_CRC32C: ChunkChecksum.of(ChunkAlgorithm.CRC32C, (data,)).hexdigest,
    }

    reply = piece_upload.client.put(f"/upload/{piece_upload.upload_id}/chunk/0", data=data, headers=headers)

    assert_error(reply, 400, "invalid_field")
    assert HEADER_CHUNK_SHA256 in reply.get_json()["error"]["message"]
    assert HEADER_CHUNK_CRC32C in reply.get_json()["error"]["message"]
