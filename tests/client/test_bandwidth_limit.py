"""The bandwidth limit on real bytes through the real server: shared within ±10% over 10 s, and changeable live."""

from __future__ import annotations

import time

import pytest

from core.client.events import EventKind
from core.client.journal import JobState
from core.protocol import MiB
from tests.client.support import EventLog, local_sha256, server_sha256

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

LIMIT = 2 * MiB
SECONDS = 10


def test_two_concurrent_uploads_share_the_bandwidth_limit(server, make_manager, make_file, events: EventLog):
    bags = [make_file(LIMIT * SECONDS // 2), make_file(LIMIT * SECONDS // 2)]
    manager = make_manager(server.upload_url, bandwidth_limit=LIMIT, max_concurrent_uploads=2, chunk_size=1 * MiB)
    ids = [manager.add_upload(bag) for bag in bags]
    manager.start()
    assert manager.wait(60)

    progress = [e for e in events.of(EventKind.PROGRESS) if e.bytes_sent > 0]
    sent: dict[str, int] = {}
    samples = []
    for event in progress:
        sent[event.job_id] = event.bytes_sent
        samples.append((event.timestamp, sum(sent.values())))
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    rate = (b1 - b0) / (t1 - t0)

    assert rate == pytest.approx(LIMIT, rel=0.10)
    # Both were in flight together: the limit is shared, not per upload.
    first_done = min(max(e.timestamp for e in progress if e.job_id == i) for i in ids)
    assert all(any(e.timestamp < first_done - 1 for e in progress if e.job_id == i) for i in ids)
    for job_id, bag in zip(ids, bags, strict=True):
        record = manager.job(job_id)
        assert record.state is JobState.COMPLETE, record.error
        assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)


FAST, SLOW = 4 * MiB, 1 * MiB


def rate_between(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Bytes/s between the first sample at or after ``start`` and the last one at or before ``end``."""
    inside = [(t, sent) for t, sent in samples if start <= t <= end]
    (t0, b0), (t1, b1) = inside[0], inside[-1]
    return (b1 - b0) / (t1 - t0)


def test_a_limit_changed_while_uploading_is_followed_at_once(server, make_manager, make_file, events: EventLog):
    """4 MiB/s for ~3 s, then 1 MiB/s for 4 s, then unlimited to finish: real bytes, ~8 s."""
    bag = make_file(24 * MiB)
    manager = make_manager(server.upload_url, bandwidth_limit=FAST, chunk_size=1 * MiB)
    job_id = manager.add_upload(bag)
    manager.start()

    events.wait_for(lambda e: e.kind is EventKind.PROGRESS and e.bytes_sent >= 12 * MiB, timeout=30)
    lowered = time.time()
    manager.bandwidth_limit = SLOW
    time.sleep(4.5)
    manager.bandwidth_limit = 0
    assert manager.wait(30)

    samples = [(e.timestamp, e.bytes_sent) for e in events.of(EventKind.PROGRESS) if e.bytes_sent > 0]
    started = samples[0][0]
    # Half a second after each change for the pieces already on their way.
    assert rate_between(samples, started + 0.5, lowered) == pytest.approx(FAST, rel=0.15)
    assert rate_between(samples, lowered + 0.5, lowered + 4.5) == pytest.approx(SLOW, rel=0.15)
    record = manager.job(job_id)
    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)
