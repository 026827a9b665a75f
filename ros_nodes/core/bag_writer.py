"""One split = one rosbags ``Writer``: open, add connections on first sight, write, close.

rosbags writes a complete bag per Writer and ``metadata.yaml`` only at close,
so splitting is Writer rotation. A small sidecar (``.recorder.json``) is kept
in the bag folder while it is written: it names the robot, session and
connections (with their type hashes), which is what salvage needs after a
crash and what the hand-off needs after a restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, TypesysError, get_typestore
from rosbags.typesys.store import Typestore

from core.config import RecorderConfig
from ros_nodes.core.errors import RecorderError
from ros_nodes.core.handoff import METADATA_FILE, BagInfo

SIDECAR = ".recorder.json"
# Per-message framing the storage adds on top of the payload (an MCAP message record header).
MESSAGE_OVERHEAD = 31

_STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_COMPRESSION_MODES = {
    "storage": CompressionMode.STORAGE,
    "file": CompressionMode.FILE,
    "message": CompressionMode.MESSAGE,
}


def typestore_for(distro: str) -> Typestore:
    """The pinned typestore of a ROS distro (``Stores.LATEST`` would move under our feet)."""
    try:
        return get_typestore(Stores(f"ros2_{distro.lower()}"))
    except ValueError as err:
        msg = f"unknown ROS distro {distro!r} (humble, iron, jazzy, kilted …)"
        raise RecorderError(msg) from err


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the recorder first saw it: type, and the publisher QoS to record."""

    topic: str
    msgtype: str
    qos: tuple[Qos, ...] = ()
    msgdef: str | None = None  # sources that know the definition (rclpy, watch) may pass it
    rihs01: str | None = None


@dataclass
class SplitWriter:
    """Writes one split; not thread-safe (owned by the recorder's writer thread)."""

    info: BagInfo
    config: RecorderConfig
    typestore: Typestore
    size: int = 0
    connections: dict[str, Connection] = field(default_factory=dict)
    _writer: Writer | None = None
    _chunks_flushed: int = 0

    def open(self) -> None:
        writer = Writer(
            self.info.path, version=self.config.bag_version, storage_plugin=_STORAGE_PLUGINS[self.config.storage]
        )
        if self.config.compression == "zstd":
            writer.set_compression(_COMPRESSION_MODES[self.config.compression_mode], CompressionFormat.ZSTD)
        for key, value in custom_data(self.info).items():
            writer.set_custom_data(key, value)
        writer.open()
        self._writer = writer
        self._save_sidecar()

    def _open_writer(self) -> Writer:
        if self._writer is None:
            msg = f"split {self.info.bag} is not open"
            raise RecorderError(msg)
        return self._writer

    @property
    def writer(self) -> Writer:
        """The open rosbags Writer, for a batch loop that keeps ``info`` and ``size`` up to date itself."""
        return self._open_writer()

    def add_topic(self, topic: TopicInfo) -> Connection:
        writer = self._open_writer()
        try:
            if topic.msgdef and topic.rihs01:
                conn = writer.add_connection(
                    topic.topic, topic.msgtype, msgdef=topic.msgdef, rihs01=topic.rihs01, offered_qos_profiles=topic.qos
                )
            else:
                conn = writer.add_connection(
                    topic.topic, topic.msgtype, typestore=self.typestore, offered_qos_profiles=topic.qos
                )
        except (KeyError, TypesysError) as err:
            # rosbags says TypesysError for a type its typestore lacks: drop this topic, not the recording.
            msg = f"no message definition for {topic.msgtype} on {topic.topic}: pass msgdef or use a known type"
            raise RecorderError(msg) from err
        self.connections[topic.topic] = conn
        self.info.topics.setdefault(topic.topic, 0)
        self._save_sidecar()
        return conn

    def write(self, conn: Connection, timestamp: int, data: bytes | memoryview) -> None:
        """Write one message and keep the split's counts; runs once per message, so no helper calls."""
        self._open_writer().write(conn, timestamp, data)
        info = self.info
        if not info.message_count:
            info.start_ns = info.end_ns = timestamp
        elif timestamp > info.end_ns:
            info.end_ns = timestamp
        elif timestamp < info.start_ns:
            info.start_ns = timestamp
        info.message_count += 1
        info.topics[conn.topic] += 1
        self.size += len(data) + MESSAGE_OVERHEAD

    def flush_closed_chunks(self) -> None:
        """Called once per written batch, not per message: it is on the hot path."""
        # A finished MCAP chunk must reach the OS, not sit in Python's buffer:
        # after a kill -9 salvage recovers exactly the chunks the OS has.
        storage = self._writer.storage if self._writer else None
        chunks = getattr(storage, "chunks", None)
        if chunks is not None and len(chunks) != self._chunks_flushed:
            self._chunks_flushed = len(chunks)
            storage.bio.flush()  # type: ignore[union-attr]

    def close(self) -> BagInfo:
        """Finish the bag (index, summary, ``metadata.yaml``), fsync it, drop the sidecar."""
        writer, self._writer = self._open_writer(), None
        writer.close()
        for file in self.info.path.iterdir():
            if file.name != SIDECAR:  # deleted below: syncing it would only cost time
                fsync_file(file)
        fsync_file(self.info.path)
        (self.info.path / SIDECAR).unlink(missing_ok=True)
        return self.info

    def _save_sidecar(self) -> None:
        data: dict[str, Any] = {
            "bag": self.info.bag,
            "robot_id": self.info.robot_id,
            "session": self.info.session,
            "split_index": self.info.split_index,
            "storage": self.info.storage,
            "bag_version": self.config.bag_version,
            "compression": self.config.compression,
            "compression_mode": self.config.compression_mode,
            "connections": {c.topic: {"msgtype": c.msgtype, "rihs01": c.digest} for c in self.connections.values()},
        }
        write_json_atomic(self.info.path / SIDECAR, data)


def custom_data(info: BagInfo) -> dict[str, str]:
    """rosbag2 ``custom_data`` so a bag names its robot and session wherever it travels."""
    data = {"robot_id": info.robot_id, "session": info.session, "split_index": str(info.split_index)}
    if info.recovered:
        data["recovered"] = "true"
    return data


def is_complete(path: Path) -> bool:
    return (path / METADATA_FILE).is_file()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
