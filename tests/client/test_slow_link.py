"""The stall watchdog on a real 32 KB/s link (tc tbf in a network namespace), stalled_timeout 5 s.

The kernel accepts a few hundred KB into its send buffer at once and drains it at the
link's pace, and then the reply is awaited: a watchdog counting bytes handed to the
socket sees seconds of silence on a link that is busy all along (issue 17). It must watch
what the peer acknowledges instead, and still catch a link that really went dark.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.client.events import EventKind
from core.client.journal import JobState
from core.client.send_pace import MIN_PIECE
from core.client.transfer import ServerClient
from core.protocol import KiB
from tests.client.support import local_sha256, one_chunk_upload, sent_pieces, server_sha256
from tests.helpers import netns
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer

pytestmark = [
    pytest.mark.gunicorn,
    pytest.mark.slow,
    pytest.mark.skipif(not netns.available(), reason="needs root with ip and tc"),
]

LINK = "256kbit"  # 32 KB/s
STALLED_TIMEOUT = 5.0


@pytest.fixture
def slow_link(tmp_path: Path) -> Iterator[tuple[netns.NetNamespace, GunicornServer]]:
    """This thread inside a namespace whose loopback carries 32 KB/s, and a gunicorn serving in it."""
    with netns.NetNamespace(rate=LINK) as ns, GunicornServer(tmp_path / "uploads", workers=2) as server:
        yield ns, server


def watchdog_aborts(events) -> list:
    return [e for e in events.of(EventKind.RETRY) if "watchdog" in (e.error or "")]


def test_a_slow_but_moving_transfer_is_never_aborted(slow_link, make_manager, make_file, events):
    ns, server = slow_link
    bag = make_file(384 * KiB)  # ~12 s on this link: more than twice stalled_timeout
    manager = make_manager(server.upload_url, chunk_size=8 * 1024 * KiB)
    manager.stalled_timeout = STALLED_TIMEOUT
    job_id = manager.add_upload(bag)
    manager.start()
    assert manager.wait(90, job_ids=[job_id])
    record = manager.job(job_id)
    ns.set_rate("1gbit")  # download the result quickly

    assert watchdog_aborts(events) == []
    assert events.of(EventKind.RETRY) == []
    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)


def test_a_blackout_is_detected_within_stalled_timeout_plus_one_second(slow_link, make_manager, make_file, events):
    ns, server = slow_link
    bag = make_file(384 * KiB)
    # A proxy that buffers little, so a pause stops the acknowledgements about when it starts.
    with FaultProxy(server.port, recv_buffer=4 * KiB) as proxy:
        manager = make_manager(proxy.url + "/upload", chunk_size=8 * 1024 * KiB)
        manager.stalled_timeout = STALLED_TIMEOUT
        job_id = manager.add_upload(bag)
        manager.start()
        wait_until(lambda: proxy.bytes_up >= 64 * KiB, 30, 0.05, "the first 64 KiB through the proxy")
        proxy.pause()
        paused_at = time.monotonic()
        stalled = events.wait_for(lambda e: e.kind is EventKind.RETRY and "watchdog" in (e.error or ""), timeout=30)
        detected_after = time.monotonic() - paused_at
        ns.set_rate("1gbit")
        proxy.resume()
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)

    assert stalled.job_id == job_id
    assert detected_after <= STALLED_TIMEOUT + 1.0, f"detected {detected_after:.1f} s after the pause"
    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)


def test_pieces_stay_small_on_a_slow_link(slow_link):
    """The kernel takes the first few hundred KB at once; the pace follows the acknowledgements, not that burst."""
    _, server = slow_link
    client = ServerClient(server.upload_url)
    chunk = os.urandom(256 * KiB)  # ~8 s on this link
    pieces = sent_pieces(client, one_chunk_upload(client, chunk, "slow.bag"), chunk)
    client.close()
    assert sum(pieces) == len(chunk)
    assert set(pieces) == {MIN_PIECE}
    assert client.pace.piece == MIN_PIECE
