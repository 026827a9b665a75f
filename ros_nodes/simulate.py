"""``python -m ros_nodes.simulate``: a simulated robot publishing realistic traffic through the recording core.

Same path as the rclpy node: serialized CDR bytes go into ``Recorder.record``
with their receive time; splits are closed and, with ``--upload-url``, handed
to the NetworkManager as they close. Used by the demo and the tests.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence

from core.config import ConfigError
from ros_nodes.cli import (
    EXIT_DISK,
    EXIT_OK,
    EXIT_UPLOADS_UNFINISHED,
    EXIT_USAGE,
    add_recorder_options,
    config_from_args,
    make_heartbeat,
    make_recorder_uploader,
    setup_logging,
    stop_on_signals,
)
from ros_nodes.core.errors import InsufficientDiskError, RecorderError
from ros_nodes.core.malloc import tune_malloc
from ros_nodes.core.messages import MessageFactory, Stream, default_streams, schedule
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.splitting import NS_PER_S

log = logging.getLogger("ros_nodes.simulate")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to record (0: until Ctrl-C)")
    parser.add_argument("--pointcloud", action="store_true", help="add a 10 Hz PointCloud2 (~320 KB each)")
    parser.add_argument("--image-rate", type=float, default=30.0, help="CompressedImage rate in Hz")
    parser.add_argument("--wait-uploads", type=float, default=300.0, help="seconds to wait for uploads at the end")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the simulated sensors")
    add_recorder_options(parser)
    return parser.parse_args(argv)


def publish(recorder: Recorder, streams: list[Stream], duration: float, stop: threading.Event, seed: int) -> int:
    """Publish in real time until ``duration`` or ``stop``; returns the number of messages published."""
    factory = MessageFactory(recorder.typestore, seed=seed)
    published = 0
    block = duration if 0 < duration < 10 else 10.0
    start = time.time_ns()
    offset = 0.0
    while not stop.is_set() and (duration <= 0 or offset < duration):
        length = min(block, duration - offset) if duration > 0 else block
        for stamp, stream, seq in schedule(streams, start + int(offset * NS_PER_S), length):
            delay = (stamp - time.time_ns()) / NS_PER_S
            if delay > 0 and stop.wait(delay):
                return published
            data = factory.serialize(stream.msgtype, stamp, seq)
            recorder.record(stream.topic, stream.msgtype, data)
            published += 1
        offset += length
    return published


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    tune_malloc()
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"ros_nodes.simulate: {err}", file=sys.stderr)
        return EXIT_USAGE
    stop = stop_on_signals()
    manager = make_recorder_uploader(args, config)
    recorder = Recorder(config, uploader=manager)
    if manager is not None:
        manager.start()
    heartbeat = make_heartbeat(args, recorder, manager)
    if heartbeat is not None:
        heartbeat.start()
    try:
        recorder.start()
    except InsufficientDiskError as err:
        print(f"ros_nodes.simulate: {err}", file=sys.stderr)
        return EXIT_DISK
    except RecorderError as err:
        print(f"ros_nodes.simulate: {err}", file=sys.stderr)
        return EXIT_USAGE
    streams = default_streams(pointcloud=args.pointcloud, image_rate=args.image_rate)
    published = publish(recorder, streams, args.duration, stop, args.seed)
    recorder.stop()
    status = recorder.status()
    log.info(
        "published %d messages, wrote %d in %d splits, dropped %d",
        published,
        status.messages_written,
        status.splits_done,
        status.dropped_messages,
    )
    exit_code = EXIT_DISK if (status.stop_reason or "").startswith("disk_full") else EXIT_OK
    if manager is not None:
        finished = manager.wait(args.wait_uploads)
        if not finished:
            log.error("uploads still pending after %.0f s; they resume on the next start", args.wait_uploads)
            exit_code = exit_code or EXIT_UPLOADS_UNFINISHED
    if heartbeat is not None:
        heartbeat.stop()
    if manager is not None:
        manager.stop()
    recorder.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
