"""The shared token bucket: a bandwidth limit holds on fake time, changes at once, and 0 means unlimited."""

from __future__ import annotations

import pytest

from core.client.bandwidth import TokenBucket
from tests.client.support import FakeClock

PIECE = 64 * 1024


def send(bucket: TokenBucket, total: int, piece: int = PIECE) -> None:
    for _ in range(total // piece):
        bucket.consume(piece)


@pytest.mark.parametrize("rate", [100_000, 1_048_576, 10_000_000])
def test_sending_takes_bytes_divided_by_rate(clock: FakeClock, rate: int):
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    total = 200 * PIECE
    start = clock()

    send(bucket, total)

    # The only slack is the initial (empty) burst allowance.
    assert clock() - start == pytest.approx(total / rate, rel=0.01)


def test_a_lowered_limit_applies_to_the_next_piece(clock: FakeClock):
    bucket = TokenBucket(1_000_000, clock=clock, sleep=clock.sleep)
    send(bucket, 100 * PIECE)
    middle = clock()

    bucket.rate = 500_000
    send(bucket, 100 * PIECE)

    assert clock() - middle == pytest.approx(100 * PIECE / 500_000, rel=0.02)


@pytest.mark.parametrize("unlimited", [0, None])
def test_zero_or_none_is_unlimited(clock: FakeClock, unlimited: int | None):
    bucket = TokenBucket(unlimited, clock=clock, sleep=clock.sleep)

    send(bucket, 1000 * PIECE)

    assert clock.sleeps == []


def test_lifting_the_limit_forgives_the_debt(clock: FakeClock):
    bucket = TokenBucket(1000, clock=clock, sleep=lambda _s: None)
    bucket.consume(10 * PIECE)  # a big debt at 1 kB/s, not slept off

    bucket.rate = 0
    bucket.rate = 1_000_000
    slept = bucket.consume(PIECE)

    assert slept == pytest.approx(PIECE / 1_000_000, rel=0.01)


def test_idle_time_earns_only_a_small_burst(clock: FakeClock):
    bucket = TokenBucket(1_000_000, burst_seconds=0.05, clock=clock, sleep=clock.sleep)
    clock.advance(3600)  # an hour idle must not allow an hour's worth of bytes at once
    start = clock()

    send(bucket, 100 * PIECE)

    assert clock() - start == pytest.approx(100 * PIECE / 1_000_000 - 0.05, rel=0.01)


def test_concurrent_senders_share_one_rate(clock: FakeClock):
    """Two senders interleaving pieces (as two upload threads do) get the rate between them, not each."""
    bucket = TokenBucket(1_000_000, clock=clock, sleep=lambda _s: None)
    debts = [bucket.consume(PIECE) for _ in range(20)]

    # Each sender's wait grows with everyone's debt: the 20th piece waits for all 20.
    assert debts[-1] == pytest.approx(20 * PIECE / 1_000_000, rel=0.01)
