"""Recording core throughput vs a bare rosbags Writer loop on the same messages, and drops at 50 MB/s offered.

Run: ``.venv/bin/python -m bench.recorder_throughput`` (about two minutes). The
core fsyncs every closed split before handing it to the uploader; the bare loop
does not, so both baselines are printed: the bare loop, and the bare loop plus
the same fsync.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin

from core.config import MiB, RecorderConfig
from ros_nodes.core.bag_writer import fsync_file, typestore_for
from ros_nodes.core.messages import POINT_CLOUD, MessageFactory, default_streams, schedule
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.splitting import NS_PER_S

Message = tuple[str, str, bytes, int]
START_NS = 1_700_000_000 * NS_PER_S
MB = 1e6


def simulated_mix(seconds: float) -> list[Message]:
    factory = MessageFactory(typestore_for("humble"))
    return [
        (stream.topic, stream.msgtype, factory.serialize(stream.msgtype, stamp, seq), stamp)
        for stamp, stream, seq in schedule(default_streams(), START_NS, seconds)
    ]


def large_messages(count: int) -> list[Message]:
    factory = MessageFactory(typestore_for("humble"), cloud_points=65_536)  # ~1 MiB clouds
    return [
        ("/lidar/points", POINT_CLOUD, factory.serialize(POINT_CLOUD, START_NS + i * NS_PER_S // 10, i), i)
        for i in range(count)
    ]


def bare_writer(messages: list[Message], out: Path) -> None:
    typestore = typestore_for("humble")
    with Writer(out / "bare", version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, msgtype, data, stamp in messages:
            conn = conns.get(topic)
            if conn is None:
                conn = conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(conn, stamp, data)


def bare_writer_fsync(messages: list[Message], out: Path) -> None:
    """The same loop with the core's durability: every finished bag file fsynced before hand-off."""
    bare_writer(messages, out)
    for file in (out / "bare").iterdir():
        fsync_file(file)


def core(messages: list[Message], out: Path, max_bag_size: int = 0) -> None:
    config = RecorderConfig(
        output_dir=out / "core", min_free_disk=0, max_bag_size=max_bag_size, max_bag_duration=0, buffer_size=2**40
    )
    recorder = Recorder(config)
    recorder.start()
    for topic, msgtype, data, stamp in messages:
        recorder.record(topic, msgtype, data, stamp)
    recorder.stop()
    recorder.close()
    if recorder.status().dropped_messages:
        raise RuntimeError("the throughput run dropped messages; raise RECORDER_BUFFER_SIZE")


def timed(run: Callable[[list[Message], Path], None], messages: list[Message]) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    try:
        start = time.perf_counter()
        run(messages, out)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out)


def compare(name: str, messages: list[Message], rounds: int) -> None:
    size = sum(len(m[2]) for m in messages)
    runs: dict[str, list[float]] = {"bare": [], "bare+fsync": [], "core": [], "core+splits": []}
    for _ in range(rounds):
        runs["bare"].append(timed(bare_writer, messages))
        runs["bare+fsync"].append(timed(bare_writer_fsync, messages))
        runs["core"].append(timed(core, messages))
        runs["core+splits"].append(timed(lambda m, o: core(m, o, max_bag_size=64 * MiB), messages))
    bare = statistics.median(runs["bare"])
    print(f"\n{name}: {len(messages)} messages, {size / MB:.0f} MB, median of {rounds} rounds")
    durable = statistics.median(runs["bare+fsync"])
    print(f"  {'':12} {'msgs/s':>10} {'MB/s':>8} {'vs bare':>8} {'vs bare+fsync':>14}")
    for label, times in runs.items():
        t = statistics.median(times)
        print(f"  {label:12} {len(messages) / t:10.0f} {size / MB / t:8.1f} {bare / t:8.2f} {durable / t:14.2f}")


def offered_load(rate_mb: float, seconds: float) -> None:
    """Feed images in real time at ``rate_mb`` MB/s (plus the small streams) and count drops."""
    image_rate = rate_mb * MB / 100_000
    factory = MessageFactory(typestore_for("humble"))
    streams = default_streams(image_rate=image_rate)
    plan = list(schedule(streams, 0, seconds))
    payloads = {s.topic: factory.serialize(s.msgtype, START_NS, 0) for s in streams}
    out = Path(tempfile.mkdtemp(prefix="bench-recorder-load-"))
    try:
        config = RecorderConfig(output_dir=out, min_free_disk=0, max_bag_size=512 * MiB)
        recorder = Recorder(config)
        recorder.start()
        peak = 0
        start = time.perf_counter()
        for offset, stream, _seq in plan:
            delay = offset / NS_PER_S - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
            recorder.record(stream.topic, stream.msgtype, payloads[stream.topic])
            peak = max(peak, recorder.status().buffered_bytes) if _seq % 50 == 0 else peak
        elapsed = time.perf_counter() - start
        recorder.stop()
        status = recorder.status()
        recorder.close()
    finally:
        shutil.rmtree(out)
    offered = sum(len(payloads[s.topic]) for _, s, _ in plan) / MB / elapsed
    print(f"\noffered load: {offered:.1f} MB/s for {elapsed:.1f} s, {len(plan)} messages")
    print(f"  written {status.messages_written}, dropped {status.dropped_messages}, peak buffer {peak / MB:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mix-seconds", type=float, default=30.0)
    parser.add_argument("--large", type=int, default=300, help="number of ~1 MiB messages")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    args = parser.parse_args()
    compare("simulated robot mix", simulated_mix(args.mix_seconds), args.rounds)
    compare("large messages (~1 MiB PointCloud2)", large_messages(args.large), args.rounds)
    offered_load(50.0, args.load_seconds)


if __name__ == "__main__":
    main()
