"""Recording core throughput vs a bare rosbags Writer loop on the same messages, and drops at 50 MB/s offered.

Run: ``.venv/bin/python -m bench.recorder_throughput [--malloc tuned|default]`` (about a minute).

What makes the comparison fair:

- Same durability. The core fsyncs every closed split (each file and the
  folder) before handing it to the uploader, so the baseline does exactly the
  same after ``Writer.close()``.
- Same span. Each side is timed from the first message handed over to the bag
  being closed and fsynced. One-time setup is outside both (typestore loading,
  building the ``Recorder`` with its hand-off ledger); per-bag work is inside
  both (opening the Writer, adding connections, writing metadata at close).
- Noise. The machine is shared: core and baseline alternate within each round
  (the order rotates every round, so cache warmth and drift favour none), and
  each ratio reported is the median of the per-round ratios over ``--rounds``
  (default 7), next to its spread.
- Threads and malloc. The core writes on its own thread; ``bare-thread`` runs
  the bare loop on a second thread too. With glibc's default malloc settings
  ~1 MiB buffers are mmapped or heap-allocated depending on the thread and the
  process, which swung the bare loop between 0.6 and 1.9 GB/s. The recorder's
  entry points fix the thresholds (``ros_nodes.core.malloc``); ``--malloc
  tuned`` (the default) does the same here, for the baseline and the core
  alike, since they share this process; ``--malloc default`` leaves glibc's.
- Garbage collector. ``--gc frozen`` freezes everything alive after setup
  (typestore, messages) and raises the collection thresholds, for both sides;
  ``--gc default`` (the default) leaves Python's. See BENCHMARKS.md for why the
  recorder does not do this itself.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys.store import Typestore

from core.config import MiB, RecorderConfig
from ros_nodes.core.bag_writer import fsync_file, typestore_for
from ros_nodes.core.malloc import tune_malloc
from ros_nodes.core.messages import POINT_CLOUD, MessageFactory, default_streams, schedule
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.splitting import NS_PER_S

Message = tuple[str, str, bytes, int]
START_NS = 1_700_000_000 * NS_PER_S
MB = 1e6
GC_THRESHOLDS = (10_000, 50, 100)  # --gc frozen: collections ~14x rarer than Python's (700, 10, 10)
TYPESTORE = typestore_for("humble")


def simulated_mix(seconds: float) -> list[Message]:
    factory = MessageFactory(TYPESTORE)
    return [
        (stream.topic, stream.msgtype, factory.serialize(stream.msgtype, stamp, seq), stamp)
        for stamp, stream, seq in schedule(default_streams(), START_NS, seconds)
    ]


def large_messages(count: int) -> list[Message]:
    factory = MessageFactory(TYPESTORE, cloud_points=65_536)  # ~1 MiB clouds
    return [
        ("/lidar/points", POINT_CLOUD, factory.serialize(POINT_CLOUD, START_NS + i * NS_PER_S // 10, i), i)
        for i in range(count)
    ]


def bare_writer(messages: list[Message], out: Path, typestore: Typestore = TYPESTORE) -> float:
    """A plain Writer loop plus the core's durability (fsync of every bag file and the folder); returns seconds."""
    bag = out / "bare"
    start = time.perf_counter()
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, msgtype, data, stamp in messages:
            conn = conns.get(topic)
            if conn is None:
                conn = conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(conn, stamp, data)
    for file in bag.iterdir():
        fsync_file(file)
    fsync_file(bag)
    return time.perf_counter() - start


def core(messages: list[Message], out: Path) -> float:
    """``Recorder.record()`` per message, then ``stop()`` (queue, writer thread, close, fsync, hand-off)."""
    config = RecorderConfig(
        output_dir=out / "core", min_free_disk=0, max_bag_size=0, max_bag_duration=0, buffer_size=2**40
    )
    recorder = Recorder(config)
    recorder.start()
    record = recorder.record
    start = time.perf_counter()
    for topic, msgtype, data, stamp in messages:
        record(topic, msgtype, data, stamp)
    recorder.stop()
    elapsed = time.perf_counter() - start
    recorder.close()
    if recorder.status().dropped_messages:
        raise RuntimeError("the throughput run dropped messages")
    return elapsed


def bare_writer_in_thread(messages: list[Message], out: Path) -> float:
    """The same bare loop on a second thread, where the core's writer runs (see BENCHMARKS.md: malloc differs)."""
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(bare_writer(messages, out)))
    thread.start()
    thread.join()
    return result[0]


RUNS: dict[str, Callable[[list[Message], Path], float]] = {
    "bare": bare_writer,
    "bare-thread": bare_writer_in_thread,
    "core": core,
}


def in_temp_dir(run: Callable[[list[Message], Path], float], messages: list[Message]) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    try:
        return run(messages, out)
    finally:
        shutil.rmtree(out)


def compare(name: str, messages: list[Message], rounds: int) -> None:
    size = sum(len(m[2]) for m in messages)
    labels = list(RUNS)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for index in range(rounds):
        # Rotate the order every round so cache warmth and drift favour no variant.
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times[label].append(in_temp_dir(RUNS[label], messages))
    print(f"\n{name}: {len(messages)} messages, {size / MB:.0f} MB, {rounds} interleaved rounds")
    print(f"  {'':12} {'median s':>9} {'msgs/s':>9} {'MB/s':>7}")
    for label, runs in times.items():
        t = statistics.median(runs)
        print(f"  {label:12} {t:9.3f} {len(messages) / t:9.0f} {size / MB / t:7.1f}")
    for baseline in ("bare", "bare-thread"):
        ratios = [b / c for b, c in zip(times[baseline], times["core"], strict=True)]
        print(
            f"  core/{baseline} throughput ratio: median {statistics.median(ratios):.2f}"
            f" (per round {min(ratios):.2f}…{max(ratios):.2f})"
        )


def offered_load(rate_mb: float, seconds: float) -> None:
    """Feed images in real time at ``rate_mb`` MB/s (plus the small streams) and count drops."""
    image_rate = rate_mb * MB / 100_000
    factory = MessageFactory(TYPESTORE)
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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mix-seconds", type=float, default=120.0)
    parser.add_argument("--large", type=int, default=300, help="number of ~1 MiB messages")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument(
        "--malloc", choices=("tuned", "default"), default="tuned", help="glibc thresholds as the recorder sets them"
    )
    parser.add_argument("--gc", choices=("default", "frozen"), default="default", help="garbage collector settings")
    args = parser.parse_args()
    tuned = args.malloc == "tuned" and tune_malloc()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"malloc: {'tuned (ros_nodes.core.malloc)' if tuned else 'glibc defaults'}, for every variant alike")
    mix, large = simulated_mix(args.mix_seconds), large_messages(args.large)
    if args.gc == "frozen":
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    print(f"gc: {args.gc} (thresholds {gc.get_threshold()}, {gc.get_freeze_count()} objects frozen)")
    compare("simulated robot mix", mix, args.rounds)
    compare("large messages (~1 MiB PointCloud2)", large, args.rounds)
    offered_load(50.0, args.load_seconds)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
