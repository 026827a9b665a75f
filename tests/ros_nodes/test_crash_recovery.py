"""A recorder killed mid-split: closed splits survive and are queued, the open MCAP split is salvaged."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from core.config import RecorderConfig
from ros_nodes.core.bag_writer import SIDECAR
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.salvage import RECOVERED_SUFFIX, UNRECOVERABLE_SUFFIX
from tests.helpers.processes import REPO_ROOT, wait_until
from tests.ros_nodes.support import FakeUploader, Sent, mcap_rows, rosbags_rows, split_dirs, with_changes


def snapshot_of_open_split(config: RecorderConfig, traffic: list[Sent], target: Path) -> Recorder:
    """Copy the folder of a split while it is being written: exactly what a kill -9 leaves on disk."""
    recorder = Recorder(config)
    recorder.start()
    for msg in traffic:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    # Written, not just dequeued: the writer empties the queue before it opens the split and writes.
    wait_until(lambda: recorder.status().messages_written == len(traffic), 10, what="every message written")
    (open_split,) = split_dirs(config.output_dir)
    shutil.copytree(open_split, target / open_split.name)
    return recorder


def custom_data(bag: Path) -> dict[str, str]:
    return YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["custom_data"]


def test_open_mcap_split_is_salvaged_up_to_its_last_complete_chunk(
    config: RecorderConfig, traffic: list[Sent], tmp_path: Path, uploader: FakeUploader
) -> None:
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    live = snapshot_of_open_split(config, traffic, crashed)

    recovered = Recorder(with_changes(config, output_dir=crashed), uploader=uploader).recover()
    live.close()

    (info,) = recovered
    assert info.recovered
    assert info.bag.endswith(RECOVERED_SUFFIX)
    (bag,) = split_dirs(crashed)
    assert bag == info.path
    rows = rosbags_rows(bag)
    assert 0 < len(rows) < len(traffic)  # the unfinished last chunk is lost, the rest is back
    assert rows == [(m.topic, m.timestamp, m.data) for m in traffic[: len(rows)]]
    assert mcap_rows(bag) == rows
    assert custom_data(bag)["recovered"] == "true"
    assert {Path(f).name for f in uploader.files()} == {f.name for f in bag.iterdir()}
    assert all(meta["recovered"] for _f, _p, meta in uploader.calls)


def test_a_crashed_sqlite3_split_is_kept_and_reported_not_deleted(
    config: RecorderConfig, traffic: list[Sent], tmp_path: Path
) -> None:
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    config = with_changes(config, storage="sqlite3")
    live = snapshot_of_open_split(config, traffic, crashed)

    restarted = Recorder(with_changes(config, output_dir=crashed))
    assert restarted.recover() == []
    live.close()

    (kept,) = [p for p in crashed.iterdir() if p.name.endswith(UNRECOVERABLE_SUFFIX)]
    assert (kept / SIDECAR).exists()
    assert restarted.status().unrecoverable_bags == [str(kept)]


def test_recovery_queues_each_bag_once_across_restarts(
    config: RecorderConfig, traffic: list[Sent], tmp_path: Path, uploader: FakeUploader
) -> None:
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    snapshot_of_open_split(config, traffic, crashed).close()
    config = with_changes(config, output_dir=crashed)

    Recorder(config, uploader=uploader).recover()
    first = list(uploader.calls)
    Recorder(config, uploader=uploader).recover()

    assert first
    assert uploader.calls == first


@pytest.mark.slow
def test_sigkill_mid_recording_keeps_closed_splits_and_salvages_the_open_one(
    tmp_path: Path, uploader: FakeUploader
) -> None:
    output = tmp_path / "bags"
    argv = [
        sys.executable, "-m", "ros_nodes.simulate",
        "--duration", "60", "--output", str(output), "--robot-id", "killed",
        "--max-bag-duration", "3", "--storage", "mcap", "--min-free-disk", "0",
    ]  # fmt: skip
    # 3 s splits: the open split passes its first chunk (~1.2 MB) well before it rotates, so the
    # kill cannot land in the rotation itself and leave nothing open to salvage.
    log = (tmp_path / "simulate.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:

        def closed_and_open_with_a_chunk() -> bool:
            dirs = split_dirs(output) if output.exists() else []
            closed = [d for d in dirs if (d / "metadata.yaml").exists()]
            open_ = [d for d in dirs if (d / SIDECAR).exists()]
            return len(closed) >= 2 and any(
                f.stat().st_size > 1_200_000
                for d in open_
                if not (d / "metadata.yaml").exists()
                for f in d.glob("*.mcap")
            )

        wait_until(closed_and_open_with_a_chunk, 60, what="two closed splits and an open one with a chunk")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        log.close()

    closed = [d for d in split_dirs(output) if (d / "metadata.yaml").exists()]
    for bag in closed:
        assert rosbags_rows(bag) == mcap_rows(bag)
        assert rosbags_rows(bag)
    config = RecorderConfig(output_dir=output, min_free_disk=0, robot_id="killed")
    recovered = Recorder(config, uploader=uploader).recover()

    assert [info.recovered for info in recovered].count(True) == 1
    assert {info.bag for info in recovered if not info.recovered} == {bag.name for bag in closed}
    salvaged = next(info.path for info in recovered if info.recovered)
    assert custom_data(salvaged)["recovered"] == "true"
    assert mcap_rows(salvaged) == rosbags_rows(salvaged)
    queued = {Path(f) for f in uploader.files()}
    assert queued == {f for info in recovered for f in info.path.iterdir()}
