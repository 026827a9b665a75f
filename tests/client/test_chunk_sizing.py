"""Piece sizing: whole chunks on a good link, pieces of ~1/8 of what the link carries between breaks, growing back."""

from __future__ import annotations

from core.client.chunk_sizing import PieceSizer
from core.protocol import MIN_PIECE_SIZE, MiB

CHUNK = 8 * MiB


def test_a_link_that_never_broke_sends_whole_chunks():
    sizer = PieceSizer()

    assert sizer.piece(0, CHUNK) == CHUNK
    sizer.succeeded(CHUNK, CHUNK)
    assert sizer.piece(0, CHUNK) == CHUNK


def test_a_break_shrinks_pieces_to_an_eighth_of_what_the_link_carried():
    sizer = PieceSizer()

    sizer.failed(6 * MiB, CHUNK)  # the link carried 6 MiB of this chunk, then reset

    assert sizer.piece(0, CHUNK) == 6 * MiB // 8
    assert sizer.piece(CHUNK - 1000, CHUNK) == 1000  # never beyond the end of the chunk


def test_pieces_never_shrink_below_the_server_minimum():
    sizer = PieceSizer()

    for _ in range(20):
        sizer.failed(1000, CHUNK)

    assert sizer.size == MIN_PIECE_SIZE


def test_bytes_carried_before_a_break_include_the_pieces_acknowledged_since_the_last_one():
    sizer = PieceSizer()
    sizer.failed(2 * MiB, CHUNK)  # -> 256 KiB pieces
    for _ in range(7):
        sizer.succeeded(256 * 1024, CHUNK)  # 1.75 MiB acknowledged

    sizer.failed(256 * 1024, CHUNK)  # 2 MiB carried in all

    assert sizer.size == 2 * MiB // 8


def test_pieces_grow_back_to_whole_chunks_after_sustained_success():
    sizer = PieceSizer()
    sizer.failed(8 * MiB, CHUNK)  # -> 1 MiB pieces
    sizes = []
    while sizer.size is not None and len(sizes) < 100:
        sizes.append(sizer.size)
        sizer.succeeded(sizer.size, CHUNK)

    assert sizes[0] == 1 * MiB
    assert sorted(set(sizes)) == [1 * MiB, 2 * MiB, 4 * MiB]
    assert sizer.piece(0, CHUNK) == CHUNK


def test_a_server_without_pieces_gets_whole_chunks():
    sizer = PieceSizer()
    sizer.failed(1 * MiB, CHUNK)

    sizer.pieces_supported = False

    assert sizer.piece(0, CHUNK) == CHUNK


def test_a_failure_before_any_byte_was_sent_leaves_the_size_alone():
    sizer = PieceSizer()
    sizer.failed(4 * MiB, CHUNK)

    sizer.failed(0, CHUNK)  # connection refused: the link's lifetime is unknown

    assert sizer.size == 4 * MiB // 8


def test_a_break_after_a_long_good_run_does_not_shrink_pieces():
    sizer = PieceSizer()
    sizer.failed(4 * MiB, CHUNK)  # -> 512 KiB
    for _ in range(7):
        sizer.succeeded(512 * 1024, CHUNK)

    sizer.failed(512 * 1024, CHUNK)  # 4 MiB carried since the last break: the same link as before

    assert sizer.size == 512 * 1024
