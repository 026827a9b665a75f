"""A link that resets every 1.5-3 s at 3 MB/s, like a cellular link: a 50 MB bag still arrives, without resending much.

8 MiB chunks take 2.8 s here, longer than the link lives: whole-chunk PUTs never finish
(issue 17: 645 MB sent in 900 s, nothing stored). Chunk pieces sized by the link's failures
(core/client/chunk_sizing.py) make progress on every connection.
"""

from __future__ import annotations

import pytest

from core.client.journal import JobState
from core.protocol import DEFAULT_CHUNK_SIZE, KiB, MiB
from tests.client.support import local_sha256, server_sha256
from tests.helpers.fault_proxy import FaultProxy

pytestmark = pytest.mark.gunicorn

MB = 1000 * 1000
FILE_SIZE = 50 * MB
LINK_RATE = 3 * MB  # bytes/s, each direction


@pytest.mark.slow
def test_a_50_mb_upload_completes_over_a_link_that_resets_every_few_seconds(server, make_manager, make_file):
    bag = make_file(FILE_SIZE)
    with FaultProxy(server.port) as proxy:
        proxy.throttle = LINK_RATE
        proxy.reset_every(1.5, 3.0, seed=17)
        manager = make_manager(proxy.url + "/upload", chunk_size=DEFAULT_CHUNK_SIZE)
        job_id = manager.add_upload(bag)
        manager.start()
        assert manager.wait(120, job_ids=[job_id])
        record = manager.job(job_id)
        resent = proxy.bytes_up - FILE_SIZE
        drops = proxy.drops

    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)
    assert drops >= 5  # the link really broke, many times
    # Everything the proxy carried towards the server, requests and headers included, beyond the file itself.
    assert resent <= FILE_SIZE // 2, f"{resent / FILE_SIZE:.0%} re-sent over {drops} resets"


def test_a_chunk_larger_than_any_connection_carries_arrives_in_pieces(server, make_manager, make_file):
    bag = make_file(1 * MiB)
    with FaultProxy(server.port) as proxy:
        proxy.drop_after_bytes = 600 * KiB  # every connection is cut after 600 KiB: a whole chunk never passes
        manager = make_manager(proxy.url + "/upload", chunk_size=1 * MiB)
        job_id = manager.add_upload(bag)
        manager.start()
        assert manager.wait(60, job_ids=[job_id])
        record = manager.job(job_id)
        carried, drops = proxy.bytes_up, proxy.drops

    assert record.state is JobState.COMPLETE, record.error
    assert server_sha256(server.upload_url, record.upload_id) == local_sha256(bag)
    assert drops >= 2
    assert carried <= 2 * MiB  # the first, whole attempt is lost; later breaks cost a piece each
