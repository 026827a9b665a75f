"""Chunk pieces (X-Chunk-Offset): a chunk sent in verified, fsynced parts; acknowledged once it is whole and intact."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from core.protocol import (
    FEATURE_CHUNK_PIECES,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_PIECE_SHA256,
    MIN_PIECE_SIZE,
    KiB,
)
from tests.server.uploads import Upload, assert_error

CHUNK = 4 * MIN_PIECE_SIZE


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_piece(upload: Upload, index: int, offset: int, length: int, *, body: bytes | None = None) -> TestResponse:
    """Send bytes [offset, offset + length) of chunk ``index``, with the piece's and the whole chunk's sha256."""
    chunk = upload.piece(index)
    data = chunk[offset : offset + length] if body is None else body
    headers = {HEADER_CHUNK_OFFSET: str(offset), HEADER_PIECE_SHA256: sha(data), HEADER_CHUNK_SHA256: sha(chunk)}
    return upload.client.put(f"/upload/{upload.upload_id}/chunk/{index}", data=data, headers=headers)


@pytest.fixture
def upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(2 * CHUNK + 1000), chunk_size=CHUNK)
    upload.init()
    return upload


def test_a_chunk_sent_in_pieces_is_acknowledged_when_its_last_piece_arrives(upload: Upload) -> None:
    first = put_piece(upload, 1, 0, MIN_PIECE_SIZE)
    assert first.status_code == 201
    assert first.get_json()["chunk_complete"] is False
    assert upload.status()["received"] == []

    second = put_piece(upload, 1, MIN_PIECE_SIZE, CHUNK - MIN_PIECE_SIZE)

    assert second.status_code == 201
    assert second.get_json() | {"upload_id": ""} == {
        "success": True,
        "upload_id": "",
        "index": 1,
        "received_count": 1,
        "chunks": 3,
        "duplicate": False,
        "chunk_offset": MIN_PIECE_SIZE,
        "piece_length": CHUNK - MIN_PIECE_SIZE,
        "chunk_complete": True,
    }
    assert upload.status()["received"] == [1]


def test_an_upload_sent_in_pieces_and_whole_chunks_finalizes_to_the_same_file(upload: Upload, jobs: Any) -> None:
    for offset in range(0, CHUNK, MIN_PIECE_SIZE):
        assert put_piece(upload, 0, offset, MIN_PIECE_SIZE).status_code == 201
    assert upload.send(1).status_code == 201
    assert put_piece(upload, 2, 0, 1000).status_code == 201  # the short last chunk in one piece

    assert upload.finalize().status_code == 202
    assert jobs.run_once() is True
    status = upload.status()
    assert status["state"] == "complete"
    assert status["verified"] is True
    assert upload.download().data == upload.data


def test_a_piece_that_does_not_match_its_sha256_is_refused(upload: Upload) -> None:
    wrong = os.urandom(MIN_PIECE_SIZE)
    chunk = upload.piece(0)
    headers = {
        HEADER_CHUNK_OFFSET: "0",
        HEADER_PIECE_SHA256: sha(chunk[:MIN_PIECE_SIZE]),
        HEADER_CHUNK_SHA256: sha(chunk),
    }

    response = upload.client.put(f"/upload/{upload.upload_id}/chunk/0", data=wrong, headers=headers)

    assert assert_error(response, 400, "checksum_mismatch")["header"] == HEADER_PIECE_SHA256


def test_a_last_piece_completing_a_chunk_with_missing_pieces_is_not_acknowledged(upload: Upload) -> None:
    # Piece [0, 64 KiB) never arrived: the part file holds zeros there, so the chunk does not match.
    put_piece(upload, 0, MIN_PIECE_SIZE, MIN_PIECE_SIZE)

    response = put_piece(upload, 0, 2 * MIN_PIECE_SIZE, CHUNK - 2 * MIN_PIECE_SIZE)

    assert assert_error(response, 400, "checksum_mismatch")["header"] == HEADER_CHUNK_SHA256
    assert upload.status()["received"] == []
    # Resending the missing piece and the last one again completes it: pieces may be sent again freely.
    put_piece(upload, 0, 0, MIN_PIECE_SIZE)
    assert put_piece(upload, 0, 2 * MIN_PIECE_SIZE, CHUNK - 2 * MIN_PIECE_SIZE).get_json()["chunk_complete"] is True
    assert upload.status()["received"] == [0]


def test_a_piece_of_an_acknowledged_chunk_is_a_duplicate_if_its_bytes_are_the_stored_ones(upload: Upload) -> None:
    upload.send(0)

    again = put_piece(upload, 0, MIN_PIECE_SIZE, MIN_PIECE_SIZE)
    different = put_piece(upload, 0, MIN_PIECE_SIZE, MIN_PIECE_SIZE, body=os.urandom(MIN_PIECE_SIZE))

    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    assert again.get_json()["chunk_complete"] is True
    assert_error(different, 409, "conflict")


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, MIN_PIECE_SIZE - 1),  # too small, and not the end of the chunk
        (CHUNK - MIN_PIECE_SIZE, MIN_PIECE_SIZE + 1),  # beyond the end of the chunk
        (CHUNK, 1),  # starts past the end
    ],
)
def test_a_piece_outside_the_chunk_or_below_the_minimum_is_refused(upload: Upload, offset: int, length: int) -> None:
    body = os.urandom(length)
    headers = {HEADER_CHUNK_OFFSET: str(offset), HEADER_PIECE_SHA256: sha(body), HEADER_CHUNK_SHA256: sha(b"x")}

    response = upload.client.put(f"/upload/{upload.upload_id}/chunk/0", data=body, headers=headers)

    assert assert_error(response, 400, "chunk_size_mismatch")
    assert upload.status()["received"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {HEADER_CHUNK_OFFSET: "-1"},
        {HEADER_CHUNK_OFFSET: "ten"},
        {HEADER_CHUNK_OFFSET: "0"},  # no piece or chunk sha256
        {HEADER_CHUNK_OFFSET: "0", HEADER_PIECE_SHA256: "0" * 64},  # no whole-chunk sha256
        {HEADER_CHUNK_OFFSET: "0", HEADER_PIECE_SHA256: "zz", HEADER_CHUNK_SHA256: "0" * 64},
    ],
)
def test_malformed_piece_headers_get_a_clear_400(upload: Upload, headers: dict[str, str]) -> None:
    response = upload.client.put(f"/upload/{upload.upload_id}/chunk/0", data=b"x" * KiB, headers=headers)

    assert_error(response, 400, "invalid_field")


def test_health_lists_the_chunk_pieces_feature(client: FlaskClient) -> None:
    assert FEATURE_CHUNK_PIECES in client.get("/health").get_json()["features"]
