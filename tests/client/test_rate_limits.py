"""The client under the server's real rate limits: 429s are waited out as Retry-After says, the bag arrives intact.

The limits are the seed's shape scaled down in time (a few seconds instead of
a minute) so a short upload meets them; the status limit keeps the default's
rate (300 per minute = 10 per 2 seconds), which the client's finalize polling
must fit without a single 429.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.client.events import EventKind
from core.client.journal import JobState
from core.protocol import KiB
from tests.client.support import EventLog, local_sha256, server_sha256
from tests.helpers.servers import GunicornServer

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

CHUNK_LIMIT = 8
WINDOW = 2  # seconds
CHUNK = 256 * KiB
CHUNKS = 20  # three windows' worth: at least two waits on a 429


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One worker: memory:// counters are per worker, so this is exactly the configured limit."""
    env = {
        "RATELIMIT_ENABLED": "1",
        "RATELIMIT_KEY_CHUNK": f"{CHUNK_LIMIT} per {WINDOW} second",
        "RATELIMIT_KEY_STATUS": f"10 per {WINDOW} second",
    }
    with GunicornServer(tmp_path_factory.mktemp("limited") / "uploads", workers=1, auth=True, env=env) as server:
        yield server


def rate_limited(events: EventLog, request: str) -> list[float]:
    """``retry_in`` of every retry after a 429 on ``request`` ("chunk", "status", "finalize", "init")."""
    return [
        e.retry_in or 0.0
        for e in events.of(EventKind.RETRY)
        if e.error and e.error.startswith(f"{request} ") and "HTTP 429" in e.error
    ]


def test_a_multi_chunk_upload_waits_out_429s_and_arrives_byte_identical(
    limited: GunicornServer, make_manager, make_file, events: EventLog
) -> None:
    bag = make_file(CHUNKS * CHUNK - 123)
    manager = make_manager(limited.upload_url, api_key=limited.robot_key, chunk_size=CHUNK)
    job_id = manager.add_upload(bag)
    manager.start()

    assert manager.wait(60), manager.job(job_id)
    record = manager.job(job_id)
    waits = rate_limited(events, "chunk")

    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(limited.upload_url, record.upload_id, limited.robot_key) == local_sha256(bag)
    assert len(waits) >= 2  # the server really refused chunks
    # Each wait is the server's Retry-After (whole seconds within one window), not the test's 0.05-0.5 s backoff.
    assert all(1 <= wait <= WINDOW + 1 for wait in waits), waits
    assert record.parks == 0  # waiting as told never used up the retries
    assert rate_limited(events, "status") == []
    assert rate_limited(events, "finalize") == []
