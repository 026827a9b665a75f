"""Fixtures for the recorder tests: configs in a temp folder and simulated traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import RecorderConfig
from ros_nodes.core.bag_writer import typestore_for
from ros_nodes.core.messages import MessageFactory, default_streams, schedule
from tests.ros_nodes.support import START_NS, FakeUploader, Sent


@pytest.fixture
def config(tmp_path: Path) -> RecorderConfig:
    return RecorderConfig(output_dir=tmp_path / "bags", min_free_disk=0, max_bag_size=0, max_bag_duration=0)


@pytest.fixture(scope="session")
def traffic() -> list[Sent]:
    """Five seconds of the simulated robot's mix (1900 messages, ~3.5 MB), time-ordered."""
    factory = MessageFactory(typestore_for("humble"), seed=1, image_bytes=20_000)
    return [
        Sent(stream.topic, stream.msgtype, factory.serialize(stream.msgtype, stamp, seq), stamp)
        for stamp, stream, seq in schedule(default_streams(), START_NS, 5.0)
    ]


@pytest.fixture
def uploader() -> FakeUploader:
    return FakeUploader()
