"""Piece sizes follow the pace the peer acknowledges bytes at: up to 1 MiB on a fast link, 64 KiB on a slow one."""

from __future__ import annotations

import os

import pytest

from core.client.bandwidth import TokenBucket
from core.client.send_pace import HISTORY, HISTORY_BYTES, MAX_PIECE, MIN_PIECE, SAMPLE_EVERY, TIMEOUT_SHARE, SendPace
from core.client.transfer import ChunkBody, ServerClient
from core.client.wire import WireSample
from core.protocol import MiB
from tests.client.support import FakeClock, one_chunk_upload, sent_pieces

SEND_TIMEOUT = 10.0


class FakeLink:
    """Acknowledges ``rate`` bytes per second of the fake clock; None from ``sample`` while ``silent``."""

    def __init__(self, clock: FakeClock, rate: float) -> None:
        self.clock = clock
        self.rate = rate
        self.acked = 0.0
        self.at = clock()
        self.silent = False

    def sample(self) -> WireSample | None:
        self.acked += (self.clock() - self.at) * self.rate
        self.at = self.clock()
        return None if self.silent else WireSample(acked=int(self.acked), unacked=0, ack_age=0.0)


def piece_after(pace: SendPace, link: FakeLink, seconds: float = 1.5 * HISTORY, step: float = 0.1) -> int:
    """The piece size after ``seconds`` of sending on ``link``, its pieces ``step`` seconds apart."""
    meter = pace.meter(link.sample, SEND_TIMEOUT)
    for _ in range(round(seconds / step)):
        meter.piece()
        link.clock.advance(step)
    return meter.piece()


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        pytest.param(32_000, MIN_PIECE, id="32 KB/s: the smallest piece"),
        pytest.param(400_000, int(400_000 * SEND_TIMEOUT * TIMEOUT_SHARE), id="400 KB/s: an eighth of the timeout"),
        pytest.param(100_000_000, MAX_PIECE, id="100 MB/s: the largest piece"),
    ],
)
def test_a_piece_takes_at_most_a_share_of_the_send_timeout_at_the_acknowledged_pace(clock, rate, expected):
    assert piece_after(SendPace(clock=clock), FakeLink(clock, rate)) == pytest.approx(expected, abs=1)


def test_a_new_pace_and_a_first_sample_start_at_the_smallest_piece(clock):
    pace = SendPace(clock=clock)
    assert pace.piece == MIN_PIECE
    assert pace.meter(FakeLink(clock, 100e6).sample, SEND_TIMEOUT).piece() == MIN_PIECE


def test_the_pace_is_kept_across_requests_and_follows_a_link_that_slows(clock):
    pace = SendPace(clock=clock)
    link = FakeLink(clock, 100e6)
    piece_after(pace, link)
    assert pace.meter(link.sample, SEND_TIMEOUT).piece() == MAX_PIECE  # the next request starts where it was
    link.rate = 32_000
    assert piece_after(pace, link, seconds=2.5 * HISTORY) == MIN_PIECE


def test_a_failed_send_starts_over_from_the_smallest_piece(clock):
    pace = SendPace(clock=clock)
    piece_after(pace, FakeLink(clock, 100e6))
    pace.failed()
    assert pace.piece == MIN_PIECE


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        pytest.param(HISTORY_BYTES / HISTORY, MIN_PIECE, id="less than HISTORY seconds and HISTORY_BYTES: unchanged"),
        pytest.param(2 * HISTORY_BYTES / HISTORY, MAX_PIECE, id="HISTORY_BYTES in less than HISTORY: judged"),
    ],
)
def test_the_pace_is_judged_over_history_seconds_or_history_bytes(clock, rate, expected):
    assert piece_after(SendPace(clock=clock), FakeLink(clock, rate), seconds=0.8 * HISTORY) == expected


def test_one_segments_acknowledgement_in_a_short_span_does_not_make_a_slow_link_look_fast(clock):
    """64 KiB acknowledged at once 20 ms in, then the 32 KB/s link's pace: judged over HISTORY, the piece stays
    one this link drains in well under the send timeout (judged over those 20 ms, it would be 1 MiB: 33 s)."""
    pace = SendPace(clock=clock)
    link = FakeLink(clock, 0)
    meter = pace.meter(link.sample, SEND_TIMEOUT)
    meter.piece()
    clock.advance(0.02)
    link.acked += 64 * 1024
    meter.piece()
    link.rate = 32_000
    assert piece_after(pace, link) / 32_000 < SEND_TIMEOUT / 2


def test_a_connection_is_sampled_at_most_once_per_interval(clock):
    calls = []
    pace = SendPace(clock=clock)
    meter = pace.meter(lambda: calls.append(clock()) or WireSample(acked=0, unacked=0, ack_age=0.0), SEND_TIMEOUT)
    for _ in range(10):
        meter.piece()
        clock.advance(SAMPLE_EVERY / 4)
    assert len(calls) == 3  # at 0, 1 and 2 intervals


def test_requests_shorter_than_the_sampling_interval_still_set_the_pace(clock):
    """On loopback a chunk is handed over within SAMPLE_EVERY: each request's one span must still count."""
    pace = SendPace(clock=clock)
    rate = 4 * HISTORY_BYTES / HISTORY
    link = FakeLink(clock, rate)
    requests = 0
    while pace.piece != MAX_PIECE and requests < 1000:
        meter = pace.meter(link.sample, SEND_TIMEOUT)
        meter.piece()
        clock.advance(SAMPLE_EVERY / 2)
        meter.piece()  # within the interval: not sampled
        meter.finish()
        clock.advance(0.05)  # awaiting the reply: not a span of sending
        requests += 1
    assert pace.piece == MAX_PIECE
    # As soon as the spans hold HISTORY_BYTES: one more for the fake link's whole-byte rounding.
    assert requests <= HISTORY_BYTES / (rate * SAMPLE_EVERY / 2) + 1


def test_without_the_kernels_count_the_piece_stays_where_it_is(clock):
    pace = SendPace(clock=clock)
    link = FakeLink(clock, 100e6)
    link.silent = True
    assert piece_after(pace, link) == MIN_PIECE


def test_a_body_without_a_meter_or_under_a_bandwidth_limit_uses_small_pieces(clock):
    data = bytes(3 * MAX_PIECE)
    assert {len(p) for p in ChunkBody(data)} == {MIN_PIECE}
    bucket = TokenBucket(200_000, clock=clock, sleep=clock.sleep)
    limited = [len(p) for p in ChunkBody(data, bucket=bucket)]
    assert sum(limited) == len(data)
    assert set(limited[:-1]) == {10_000}  # a twentieth of a second at the limit


@pytest.mark.gunicorn
def test_pieces_grow_to_the_largest_within_a_few_chunks_on_a_fast_real_link(server):
    """Loopback to a real gunicorn, 8 MiB chunks as the client sends them: each is handed over in a few ms.

    Each request adds at least its chunk less the kernel's send buffer (at most 4 MiB) to the pace's
    acknowledged bytes, so HISTORY_BYTES are reached by the fourth; six leave room.
    """
    client = ServerClient(server.upload_url)
    chunk = os.urandom(8 * MiB)
    upload_id = one_chunk_upload(client, chunk, "pace.bag")
    first = sent_pieces(client, upload_id, chunk, send_timeout=SEND_TIMEOUT)
    requests = 1
    while client.pace.piece != MAX_PIECE and requests < 6:
        sent_pieces(client, upload_id, chunk, send_timeout=SEND_TIMEOUT)  # resending a chunk is idempotent
        requests += 1
    last = sent_pieces(client, upload_id, chunk, send_timeout=SEND_TIMEOUT)
    client.close()
    assert set(first) == {MIN_PIECE}
    assert client.pace.piece == MAX_PIECE, f"still {client.pace.piece} after {requests} chunks"
    assert set(last) == {MAX_PIECE}
