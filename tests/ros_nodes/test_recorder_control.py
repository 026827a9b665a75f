"""Control, topic selection, bounded buffer, disk floor and retention of the recorder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.config import RecorderConfig
from ros_nodes.core import bag_writer
from ros_nodes.core.errors import InsufficientDiskError, RecorderStateError
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.splitting import NS_PER_S, SplitPolicy
from ros_nodes.core.status import TopicStats
from ros_nodes.core.topics import TopicSelection
from tests.helpers.processes import wait_until
from tests.ros_nodes.support import FakeUploader, Sent, record_all, rosbags_rows, split_dirs, with_changes


@pytest.mark.parametrize(
    ("topics", "include", "exclude", "accepted", "rejected"),
    [
        ((), "", "", ["/imu", "/any/thing"], []),
        (("/imu",), "", "", ["/imu"], ["/odom", "/imu/raw"]),
        ((), "^/camera/", "", ["/camera/left"], ["/imu"]),
        (("/imu",), "^/camera/", "compressed$", ["/imu", "/camera/raw"], ["/camera/compressed", "/tf"]),
        ((), "", "^/tf", ["/imu"], ["/tf", "/tf_static"]),
    ],
)
def test_topic_selection_follows_ros2_bag_record(
    topics: tuple[str, ...], include: str, exclude: str, accepted: list[str], rejected: list[str]
) -> None:
    selection = TopicSelection(topics, include, exclude)
    assert all(selection.accepts(t) for t in accepted)
    assert not any(selection.accepts(t) for t in rejected)


@pytest.mark.parametrize(
    ("policy", "state", "expected"),
    [
        (SplitPolicy(max_bytes=100), {"messages": 0, "size": 0, "next_size": 500}, False),
        (SplitPolicy(max_bytes=100), {"messages": 1, "size": 60, "next_size": 40}, False),
        (SplitPolicy(max_bytes=100), {"messages": 1, "size": 60, "next_size": 41}, True),
        (SplitPolicy(max_duration_s=1.0), {"messages": 3, "next_ns": 999_999_999}, False),
        (SplitPolicy(max_duration_s=1.0), {"messages": 3, "next_ns": 1_000_000_000}, True),
        (SplitPolicy(), {"messages": 10**6, "size": 10**12, "next_ns": 10**15}, False),
    ],
)
def test_split_policy_decides_on_bytes_and_message_time(policy: SplitPolicy, state: dict, expected: bool) -> None:
    args = {"messages": 0, "size": 0, "first_ns": 0, "next_size": 0, "next_ns": 0, **state}
    assert policy.split_before(**args) is expected


def test_only_selected_topics_are_recorded(config: RecorderConfig, traffic: list[Sent]) -> None:
    config = with_changes(config, topics=("/odom",), include_regex="^/imu", exclude_regex="")
    recorder = Recorder(config)
    recorder.start()
    for msg in traffic:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()

    (bag,) = split_dirs(config.output_dir)
    assert {topic for topic, _, _ in rosbags_rows(bag)} == {"/odom", "/imu/data"}


def test_pause_drops_nothing_queued_and_records_nothing_while_paused(
    config: RecorderConfig, traffic: list[Sent]
) -> None:
    recorder = Recorder(config)
    recorder.start()
    first, paused, resumed = traffic[:100], traffic[100:200], traffic[200:300]
    for msg in first:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.pause()
    assert recorder.status().state == "paused"
    assert not any(recorder.record(m.topic, m.msgtype, m.data, m.timestamp) for m in paused)
    recorder.resume()
    for msg in resumed:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()

    (bag,) = split_dirs(config.output_dir)
    assert sorted(ts for _, ts, _ in rosbags_rows(bag)) == sorted(m.timestamp for m in first + resumed)


@pytest.mark.parametrize(("action", "state"), [("resume", "recording"), ("pause", "paused")])
def test_control_calls_that_do_not_fit_the_state_raise(config: RecorderConfig, action: str, state: str) -> None:
    recorder = Recorder(config)
    recorder.start()
    if state == "paused":
        recorder.pause()
    with pytest.raises(RecorderStateError):
        recorder.command(action)
    with pytest.raises(RecorderStateError, match="unknown recorder command"):
        recorder.command("explode")
    recorder.close()


def test_buffer_overflow_is_counted_and_reported_never_silent(
    config: RecorderConfig, traffic: list[Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that stalls: the writer thread blocks opening the split for its first message until released.
    release = threading.Event()
    original = bag_writer.SplitWriter.open

    def stalled_open(self: bag_writer.SplitWriter) -> None:
        release.wait(30)
        original(self)

    monkeypatch.setattr(bag_writer.SplitWriter, "open", stalled_open)
    config = with_changes(config, buffer_size=200_000)
    recorder = Recorder(config)
    recorder.start()
    accepted = [m for m in traffic if recorder.record(m.topic, m.msgtype, m.data, m.timestamp)]
    status = recorder.status()
    release.set()
    recorder.stop()

    dropped = len(traffic) - len(accepted)
    assert dropped > 0
    assert status.dropped_messages == dropped
    assert status.dropped_bytes == sum(len(m.data) for m in traffic) - sum(len(m.data) for m in accepted)
    assert status.buffered_bytes <= config.buffer_size
    (bag,) = split_dirs(config.output_dir)
    assert sorted(ts for _, ts, _ in rosbags_rows(bag)) == sorted(m.timestamp for m in accepted)


def test_messages_of_an_unknown_type_are_counted_as_dropped_and_free_their_buffer_space(
    config: RecorderConfig, traffic: list[Sent]
) -> None:
    recorder = Recorder(config)
    recorder.start()
    unknown = [Sent("/custom", "my_pkg/msg/Unknown", bytes(100), m.timestamp) for m in traffic[:50]]
    for msg in unknown + traffic:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()
    status = recorder.status()

    assert (status.dropped_messages, status.dropped_bytes) == (50, 5000)
    assert status.buffered_bytes == 0
    assert status.messages_written == len(traffic)
    assert "my_pkg/msg/Unknown" in (status.last_error or "")
    recorder.close()


class FakeDisk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, _path: Path) -> int:
        return self.free


def test_start_is_refused_below_the_free_disk_floor(config: RecorderConfig) -> None:
    config = with_changes(config, min_free_disk=10_000)
    recorder = Recorder(config, free_space=FakeDisk(9_999))
    with pytest.raises(InsufficientDiskError, match="below the floor"):
        recorder.start()
    assert recorder.status().state == "idle"


def test_recording_stops_cleanly_when_the_disk_fills(config: RecorderConfig, traffic: list[Sent]) -> None:
    disk = FakeDisk(10**9)
    config = with_changes(config, min_free_disk=10_000)
    recorder = Recorder(config, free_space=disk)
    recorder.start()
    for msg in traffic[:500]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    disk.free = 5_000
    wait_until(lambda: recorder.status().state == "stopped", 10, what="the recorder to stop on a full disk")
    recorder.stop()

    status = recorder.status()
    assert status.stop_reason.startswith("disk_full")
    assert not recorder.record(traffic[600].topic, traffic[600].msgtype, traffic[600].data)
    (bag,) = split_dirs(config.output_dir)
    written = rosbags_rows(bag)
    assert len(written) + status.dropped_messages == 500
    assert len(written) == status.messages_written


def test_retention_deletes_only_verified_bags_oldest_first(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader
) -> None:
    config = with_changes(config, max_bag_duration=1.0, keep_bags=2)
    recorder = record_all(config, traffic, uploader=uploader)
    bags = split_dirs(config.output_dir)
    assert len(bags) == 5  # nothing verified yet: nothing deleted, although over the limit

    jobs = {call[2]["bag"]: [] for call in uploader.calls}
    for _file, _prio, meta in uploader.calls:
        jobs[meta["bag"]].append(meta["job_id"])
    for job in jobs[bags[1].name] + jobs[bags[3].name] + jobs[bags[4].name][:1]:
        uploader.verify(job)

    remaining = [bag.name for bag in split_dirs(config.output_dir)]
    assert remaining == [bags[0].name, bags[2].name, bags[4].name]
    recorder.close()


def test_status_reports_topics_rates_and_splits(config: RecorderConfig, traffic: list[Sent]) -> None:
    clock = iter(range(10**6))
    config = with_changes(config, max_bag_duration=1.0)
    recorder = record_all(config, traffic, clock_ns=lambda: traffic[-1].timestamp + next(clock))
    status = recorder.status().to_dict()

    assert status["state"] == "stopped"
    assert status["splits_done"] == 5
    assert status["messages_written"] == len(traffic)
    assert status["bytes_written"] == sum(len(m.data) for m in traffic)
    imu = status["topics"]["/imu/data"]
    assert imu["messages"] == 1000
    assert imu["type"] == "sensor_msgs/msg/Imu"
    assert imu["rate_hz"] == pytest.approx(200, rel=0.01)


def feed(stats: TopicStats, rate_hz: float, seconds: float) -> None:
    """What the writer does per message: plain counter updates, timestamps spaced at ``rate_hz``."""
    for _ in range(int(rate_hz * seconds)):
        stats.count += 1
        stats.bytes += 10
        stats.last_ns += int(NS_PER_S / rate_hz)


def test_topic_rate_covers_the_time_since_the_previous_status_and_drops_to_zero_when_stale() -> None:
    stats = TopicStats("sensor_msgs/msg/Imu", first_ns=NS_PER_S)
    stats.count, stats.bytes = 1, 10  # the first message
    feed(stats, 200, 3.0)
    assert stats.snapshot(stats.last_ns)["rate_hz"] == pytest.approx(200)

    feed(stats, 50, 0.5)  # less than a second since the last status: the rate stays until a second has passed
    assert stats.snapshot(stats.last_ns)["rate_hz"] == pytest.approx(200)
    feed(stats, 50, 1.5)
    assert stats.snapshot(stats.last_ns)["rate_hz"] == pytest.approx(50)

    snapshot = stats.snapshot(stats.last_ns + 2 * NS_PER_S + 1)
    assert snapshot == {"type": "sensor_msgs/msg/Imu", "messages": 1 + 600 + 100, "bytes": 7010, "rate_hz": 0.0}


class NsClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def split_bytes_on_disk(bag: Path) -> int:
    return sum(f.stat().st_size for f in bag.iterdir() if f.is_file() and f.name != bag_writer.SIDECAR)


def test_status_reports_elapsed_time_and_the_open_bags_size_on_disk(
    config: RecorderConfig, traffic: list[Sent]
) -> None:
    clock = NsClock(traffic[0].timestamp)
    recorder = Recorder(config, clock_ns=clock)
    idle = recorder.status()
    assert (idle.started_at, idle.elapsed, idle.current_bag_bytes) == (None, None, None)

    recorder.start()
    clock.now += 6_500_000_000
    for msg in traffic[:1000]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    wait_until(lambda: recorder.status().messages_written == 1000, 10, what="1000 messages written")
    # The polls above may have cached the size of a split still empty: let the cache's second pass.
    clock.now += 1_000_000_000
    (bag,) = split_dirs(config.output_dir)
    status = recorder.status()
    assert status.started_at == traffic[0].timestamp / 1e9
    assert status.elapsed == 7.5
    assert status.current_bag == bag.name
    assert status.current_bag_bytes == split_bytes_on_disk(bag) > 0

    # The size is a stat of the open split, taken at most once a second of the recorder's clock.
    for msg in traffic[1000:]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    wait_until(lambda: recorder.status().messages_written == len(traffic), 10, what="every message written")
    assert split_bytes_on_disk(bag) > status.current_bag_bytes
    assert recorder.status().current_bag_bytes == status.current_bag_bytes
    clock.now += 1_000_000_000
    assert recorder.status().current_bag_bytes == split_bytes_on_disk(bag)

    recorder.stop()
    clock.now += 60_000_000_000
    stopped = recorder.status()
    assert stopped.elapsed == 8.5  # frozen at stop()
    assert stopped.current_bag is None
    assert stopped.current_bag_bytes is None
    recorder.close()
