"""zstd level x threads on simulated bags whose payloads never repeat: ratio, MB/s and CPU, as finalize runs it.

``python -m bench.compression_levels [--seconds S] [--levels 1,3,6,9] [--threads 0,1,2] [--rounds R]``.

Each data set is a real MCAP bag written by rosbags from ``ros_nodes.core.messages`` (every image and
cloud drawn afresh, so zstd cannot match earlier frames). It is read into memory once, then streamed
through ``core.server.compression.open_writer`` (the server's own writer) in ``READ_SIZE`` pieces,
alone and together with sha256 on the same thread, the way finalize does it. Rounds interleave the
variants; the median round is printed. ``speed vs level 3, threads 0`` is the ratio measured in the
same run, the figure to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin

from core.checksums import READ_SIZE
from core.protocol import Codec
from core.server.compression import open_writer
from ros_nodes.core.bag_writer import typestore_for
from ros_nodes.core.messages import MessageFactory, Stream, default_streams, schedule

MB = 1e6
GiB = 1 << 30
START_NS = 1_700_000_000 * 10**9
DATA_SETS: dict[str, Callable[[], list[Stream]]] = {
    "robot mix + 10 Hz lidar": lambda: default_streams(pointcloud=True),
    "robot mix (camera + telemetry)": default_streams,
    "telemetry + lidar, no camera": lambda: [s for s in default_streams(pointcloud=True) if "camera" not in s.topic],
}


class _Sink:
    """Counts the compressed bytes; keeps none of them (the disk is not what is measured)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        return len(data)


@dataclass
class Result:
    ratio: float
    seconds: float
    cpu: float


def make_bag(streams: list[Stream], seconds: float, folder: Path) -> bytes:
    """The bytes of a fresh MCAP bag of ``seconds`` of simulated traffic."""
    typestore = typestore_for("humble")
    factory = MessageFactory(typestore)
    bag = folder / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {s.topic: writer.add_connection(s.topic, s.msgtype, typestore=typestore) for s in streams}
        for stamp, stream, seq in schedule(streams, START_NS, seconds):
            writer.write(conns[stream.topic], stamp, factory.serialize(stream.msgtype, stamp, seq))
    (mcap,) = bag.glob("*.mcap")
    return mcap.read_bytes()


def compress(data: bytes, level: int, threads: int, *, with_sha256: bool) -> Result:
    sink = _Sink()
    view = memoryview(data)
    digest = hashlib.sha256()
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = open_writer(Codec.ZSTD, sink, level=level, size=len(data), threads=threads)  # type: ignore[arg-type]
    for offset in range(0, len(data), READ_SIZE):
        piece = view[offset : offset + READ_SIZE]
        if with_sha256:
            digest.update(piece)
        writer.write(piece)
    writer.close()
    return Result(len(data) / sink.size, time.perf_counter() - started, time.process_time() - cpu_started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated seconds per bag (mix+lidar: ~6 MB/s)")
    parser.add_argument("--levels", default="1,3,6,9")
    parser.add_argument("--threads", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    variants = [(int(lv), int(th)) for lv in args.levels.split(",") for th in args.threads.split(",")]
    columns = ["data set (size)", "level", "threads", "ratio", "zstd MB/s", "zstd + sha256 MB/s", "CPU s/GiB"]
    print("| " + " | ".join([*columns, "speed vs level 3, threads 0"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    with tempfile.TemporaryDirectory(prefix="bench-zstd-") as tmp:
        for name, streams in DATA_SETS.items():
            data = make_bag(streams(), args.seconds, Path(tmp) / str(len(name)))
            runs: dict[tuple[int, int, bool], list[Result]] = {}
            for round_number in range(args.rounds):
                order = variants[round_number % len(variants) :] + variants[: round_number % len(variants)]
                for level, threads in order:
                    for with_sha256 in (False, True):
                        result = compress(data, level, threads, with_sha256=with_sha256)
                        runs.setdefault((level, threads, with_sha256), []).append(result)
            median = {key: statistics.median(r.seconds for r in results) for key, results in runs.items()}
            reference = median.get((3, 0, True))
            for level, threads in variants:
                alone, both = median[(level, threads, False)], median[(level, threads, True)]
                cpu = statistics.median(r.cpu for r in runs[(level, threads, True)]) * GiB / len(data)
                ratio = runs[(level, threads, False)][0].ratio
                versus = f"{reference / both:.2f}" if reference else "-"
                size = len(data) / MB
                cells = [f"{name} ({size:.0f} MB)", level, threads, f"{ratio:.3f}", f"{size / alone:.0f}"]
                print(
                    "| " + " | ".join(map(str, [*cells, f"{size / both:.0f}", f"{cpu:.2f}", versus])) + " |", flush=True
                )


if __name__ == "__main__":
    main()
