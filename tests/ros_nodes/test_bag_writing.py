"""Bags written by the recording core are real rosbag2 bags that independent readers decode byte for byte."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from ruamel.yaml import YAML

from core.config import RecorderConfig
from ros_nodes.core.recorder import Recorder
from tests.ros_nodes.support import FakeUploader, Sent, mcap_rows, record_all, rosbags_rows, split_dirs, with_changes


def sent_rows(messages: list[Sent]) -> list[tuple[str, int, bytes]]:
    return [(m.topic, m.timestamp, m.data) for m in messages]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("version", [8, 9])
def test_every_message_round_trips_byte_identical(
    config: RecorderConfig, traffic: list[Sent], storage: str, version: int
) -> None:
    config = with_changes(config, storage=storage, bag_version=version)
    record_all(config, traffic)

    (bag,) = split_dirs(config.output_dir)
    assert sorted(rosbags_rows(bag)) == sorted(sent_rows(traffic))
    info = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == version
    assert info["storage_identifier"] == storage
    assert info["message_count"] == len(traffic)
    expected_counts = Counter(m.topic for m in traffic)
    assert {t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]} == dict(
        expected_counts
    )
    assert info["custom_data"]["robot_id"] == config.robot_id


@pytest.mark.parametrize("compression", [("none", "storage"), ("zstd", "storage")])
def test_mcap_bags_decode_with_the_independent_mcap_readers(
    config: RecorderConfig, traffic: list[Sent], compression: tuple[str, str]
) -> None:
    config = with_changes(config, compression=compression[0], compression_mode=compression[1])
    record_all(config, traffic)

    (bag,) = split_dirs(config.output_dir)
    assert mcap_rows(bag) == sorted(sent_rows(traffic), key=lambda row: row[1])


@pytest.mark.parametrize(
    ("storage", "mode"), [("mcap", "file"), ("mcap", "message"), ("sqlite3", "file"), ("sqlite3", "message")]
)
def test_zstd_file_and_message_modes_read_back_with_rosbags(
    config: RecorderConfig, traffic: list[Sent], storage: str, mode: str
) -> None:
    config = with_changes(config, storage=storage, compression="zstd", compression_mode=mode)
    record_all(config, traffic)

    (bag,) = split_dirs(config.output_dir)
    assert sorted(rosbags_rows(bag)) == sorted(sent_rows(traffic))


def assert_splits_partition(config: RecorderConfig, traffic: list[Sent]) -> list[list[tuple[str, int, bytes]]]:
    """Every message is in exactly one split, and splits follow each other in time without overlap."""
    splits = [rosbags_rows(bag) for bag in split_dirs(config.output_dir)]
    assert sorted(row for rows in splits for row in rows) == sorted(sent_rows(traffic))
    for earlier, later in itertools.pairwise(splits):
        assert max(ts for _, ts, _ in earlier) <= min(ts for _, ts, _ in later)
    return splits


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_duration_splits_lose_and_duplicate_nothing(config: RecorderConfig, traffic: list[Sent], storage: str) -> None:
    config = with_changes(config, storage=storage, max_bag_duration=1.0)
    record_all(config, traffic)

    splits = assert_splits_partition(config, traffic)
    assert len(splits) == 5
    for rows in splits:
        stamps = [ts for _, ts, _ in rows]
        assert max(stamps) - min(stamps) < 1_000_000_000


def test_size_splits_stay_below_the_limit(config: RecorderConfig, traffic: list[Sent]) -> None:
    limit = 500_000
    config = with_changes(config, max_bag_size=limit)
    record_all(config, traffic)

    splits = assert_splits_partition(config, traffic)
    total = sum(len(m.data) for m in traffic)
    assert len(splits) >= total // limit
    for rows in splits:
        assert sum(len(data) for _, _, data in rows) <= limit


def test_split_now_closes_the_split_after_the_messages_already_received(
    config: RecorderConfig, traffic: list[Sent]
) -> None:
    recorder = Recorder(config)
    recorder.start()
    half = len(traffic) // 2
    for msg in traffic[:half]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.split_now()
    for msg in traffic[half:]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()

    first, second = (rosbags_rows(bag) for bag in split_dirs(config.output_dir))
    assert sorted(first) == sorted(sent_rows(traffic[:half]))
    assert sorted(second) == sorted(sent_rows(traffic[half:]))
    assert recorder.status().splits_done == 2


@pytest.mark.parametrize(
    "limits", [{"max_bag_duration": 1.0}, {"max_bag_size": 300_000}, {"max_bag_size": 700_000, "max_bag_duration": 2.0}]
)
def test_each_splits_hand_off_metadata_matches_its_contents(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader, limits: dict[str, float]
) -> None:
    # The writer keeps a split's counts in locals and stores them per batch: what it hands off must match the bag.
    config = with_changes(config, **limits)
    recorder = record_all(config, traffic, uploader=uploader)

    handed_off = {meta["bag"]: meta for _file, _prio, meta in uploader.calls}
    bags = split_dirs(config.output_dir)
    assert sorted(handed_off) == [bag.name for bag in bags]
    for bag in bags:
        rows = rosbags_rows(bag)
        meta = handed_off[bag.name]
        assert meta["message_count"] == len(rows)
        assert meta["topics"] == dict(Counter(topic for topic, _, _ in rows))
        assert (meta["start_ns"], meta["end_ns"]) == (min(ts for _, ts, _ in rows), max(ts for _, ts, _ in rows))
    status = recorder.status()
    assert (status.messages_written, status.bytes_written) == (len(traffic), sum(len(m.data) for m in traffic))
    assert sum(topic["messages"] for topic in status.topics.values()) == len(traffic)
    assert sum(topic["bytes"] for topic in status.topics.values()) == status.bytes_written
    recorder.close()
