"""The folder watcher queues a bag only once it is finished, and each bag exactly once, across restarts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.config import RecorderConfig
from ros_nodes import watch
from ros_nodes.core.handoff import Handoff
from ros_nodes.core.ledger import Ledger
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.watcher import FolderWatcher
from tests.helpers.processes import wait_until
from tests.ros_nodes.support import FakeUploader, Sent, record_all, split_dirs, with_changes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_watcher(root: Path, uploader: FakeUploader, clock: Clock) -> FolderWatcher:
    handoff = Handoff(uploader, Ledger(root / ".watch" / "handoff.sqlite"))
    handoff.listen(uploader)
    return FolderWatcher(root, handoff, robot_id="watched", settle=5.0, clock=clock)


def test_a_bag_still_being_written_is_not_queued_early(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader, clock: Clock, tmp_path: Path
) -> None:
    # The recorder stands in for `ros2 bag record`: same folder layout, metadata.yaml only at close.
    watched = config.output_dir
    recorder = Recorder(config)
    recorder.start()
    for msg in traffic[:1000]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    wait_until(lambda: recorder.status().messages_written == 1000, 10, what="the messages to be written")
    watcher = make_watcher(watched, uploader, clock)

    for _ in range(3):
        assert watcher.scan() == []
        clock.now += 60  # stable for long, but without metadata.yaml it is not finished
    assert uploader.calls == []

    recorder.stop()
    (bag,) = split_dirs(watched)
    assert watcher.scan() == []  # it just changed: wait for it to settle
    clock.now += 4
    assert watcher.scan() == []
    clock.now += 1
    assert watcher.scan() == [bag]
    assert sorted(Path(f).name for f in uploader.files()) == sorted(f.name for f in bag.iterdir())
    assert all(meta["source"] == "watch" for _f, _p, meta in uploader.calls)


def test_a_loose_mcap_file_is_queued_only_once_it_is_complete(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader, clock: Clock, tmp_path: Path
) -> None:
    record_all(config, traffic)
    (source,) = split_dirs(config.output_dir)
    (mcap,) = source.glob("*.mcap")
    watched = tmp_path / "watched"
    watched.mkdir()
    target = watched / mcap.name
    data = mcap.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # a copy in progress
    watcher = make_watcher(watched, uploader, clock)

    watcher.scan()
    clock.now += 60
    assert watcher.scan() == []

    target.write_bytes(data)
    watcher.scan()
    clock.now += 6
    assert watcher.scan() == [target]
    assert uploader.files() == [str(target)]


def test_each_completed_bag_is_queued_once_even_across_watcher_restarts(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader, clock: Clock
) -> None:
    config = with_changes(config, max_bag_duration=1.0)
    record_all(config, traffic)
    shutil.rmtree(config.output_dir / ".recorder")
    bags = split_dirs(config.output_dir)

    watcher = make_watcher(config.output_dir, uploader, clock)
    watcher.scan()
    clock.now += 10
    assert watcher.scan() == bags
    assert watcher.scan() == []
    queued = list(uploader.calls)

    restarted = make_watcher(config.output_dir, uploader, clock)
    restarted.scan()
    clock.now += 10
    assert restarted.scan() == []
    assert uploader.calls == queued
    assert len(queued) == 2 * len(bags)


def test_watch_command_requires_an_upload_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert watch.main([str(tmp_path)]) == 2
    assert "--upload-url is required" in capsys.readouterr().err


def test_a_closed_looking_file_still_open_for_writing_is_not_queued(
    config: RecorderConfig, traffic: list[Sent], uploader: FakeUploader, clock: Clock, tmp_path: Path
) -> None:
    record_all(config, traffic)
    (source,) = split_dirs(config.output_dir)
    (mcap,) = source.glob("*.mcap")
    watched = tmp_path / "watched"
    watched.mkdir()
    target = watched / mcap.name
    target.write_bytes(mcap.read_bytes())  # ends with the MCAP magic, as a finished file does
    watcher = make_watcher(watched, uploader, clock)

    with target.open("r+b"):  # a writer that paused longer than `settle`
        watcher.scan()
        clock.now += 60
        assert watcher.scan() == []

    assert watcher.scan() == [target]
    assert uploader.files() == [str(target)]


def test_a_file_open_only_for_reading_does_not_hold_the_bag_back(tmp_path: Path) -> None:
    from ros_nodes.core.watcher import open_for_writing

    file = tmp_path / "a.mcap"
    file.write_bytes(b"x")
    with file.open("rb"):
        assert not open_for_writing([file])
    with file.open("ab"):
        assert open_for_writing([file])
