"""Real rosbag2 bags for catalogue tests, written with rosbags (MCAP storage, metadata.yaml at close)."""

from __future__ import annotations

from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
STRING = "std_msgs/msg/String"
FLOAT = "std_msgs/msg/Float64"


def write_bag(path: Path, topics: dict[str, tuple[str, int]], *, start_ns: int, step_ns: int = 1_000_000) -> Path:
    """A bag at ``path`` with ``count`` messages per ``topic: (type, count)``, one every ``step_ns``."""
    samples = {STRING: TYPESTORE.types[STRING](data="hello"), FLOAT: TYPESTORE.types[FLOAT](data=1.5)}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        t = start_ns
        for name, (msgtype, count) in topics.items():
            connection = writer.add_connection(name, msgtype, typestore=TYPESTORE)
            data = TYPESTORE.serialize_cdr(samples[msgtype], msgtype)
            for _ in range(count):
                writer.write(connection, t, data)
                t += step_ns
    return path
