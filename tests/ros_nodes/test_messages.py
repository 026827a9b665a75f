"""The simulated sensors' payloads: honest for compression benchmarks (no payload ever repeats)."""

from __future__ import annotations

import pytest
import zstandard

from ros_nodes.core.bag_writer import typestore_for
from ros_nodes.core.messages import COMPRESSED_IMAGE, POINT_CLOUD, MessageFactory


@pytest.mark.parametrize(("msgtype", "count", "max_ratio"), [(COMPRESSED_IMAGE, 40, 1.02), (POINT_CLOUD, 8, 2.0)])
def test_payloads_never_repeat_so_zstd_cannot_match_earlier_ones(msgtype: str, count: int, max_ratio: float) -> None:
    factory = MessageFactory(typestore_for("humble"), image_bytes=20_000, cloud_points=4_000)
    messages = [factory.serialize(msgtype, 1_000 * seq, seq) for seq in range(count)]
    stream = b"".join(messages)
    # A long window would find any earlier copy of a payload, however far back it lies.
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27, enable_ldm=True)
    ratio = len(stream) / len(zstandard.ZstdCompressor(compression_params=params).compress(stream))
    assert ratio < max_ratio


def test_same_seed_gives_the_same_traffic() -> None:
    def first_messages(seed: int) -> list[bytes]:
        factory = MessageFactory(typestore_for("humble"), seed=seed, image_bytes=1_000, cloud_points=100)
        return [factory.serialize(t, 0, seq) for seq in range(3) for t in (COMPRESSED_IMAGE, POINT_CLOUD)]

    assert first_messages(7) == first_messages(7)
    assert first_messages(7) != first_messages(8)
