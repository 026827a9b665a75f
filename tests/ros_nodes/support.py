"""Helpers of the recorder tests: a fake uploader, recording a message list, reading bags back two ways."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.rosbag2 import Reader

from core.config import RecorderConfig
from ros_nodes.core.recorder import Recorder

START_NS = 1_700_000_000_000_000_000
Row = tuple[str, int, bytes]


@dataclass(frozen=True)
class Sent:
    topic: str
    msgtype: str
    data: bytes
    timestamp: int


@dataclass
class FakeUploader:
    """Stands in for NetworkManager where no server is involved: records every ``add_upload``."""

    calls: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    listeners: list[Callable[[Any], None]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_upload(self, file_path: str, priority: int = 5, metadata: dict[str, Any] | None = None) -> str:
        with self.lock:
            job_id = f"job-{next(self._ids)}"
            self.calls.append((file_path, priority, dict(metadata or {}, job_id=job_id)))
        return job_id

    def add_listener(self, callback: Callable[[Any], None]) -> None:
        self.listeners.append(callback)

    def verify(self, job_id: str, *, ok: bool = True) -> None:
        event = _Event(job_id, verified=ok, state=_State("complete" if ok else "failed"))
        for listener in self.listeners:
            listener(event)

    def files(self) -> list[str]:
        return [call[0] for call in self.calls]


@dataclass(frozen=True)
class _State:
    value: str


@dataclass(frozen=True)
class _Event:
    job_id: str
    verified: bool
    state: _State


def record_all(config: RecorderConfig, messages: list[Sent], **kwargs: Any) -> Recorder:
    recorder = Recorder(config, **kwargs)
    recorder.start()
    for msg in messages:
        assert recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()
    return recorder


def with_changes(config: RecorderConfig, **changes: Any) -> RecorderConfig:
    updated = replace(config, **changes)
    updated.validate()
    return updated


def rosbags_rows(bag: Path) -> list[Row]:
    with Reader(bag) as reader:
        return [(conn.topic, timestamp, bytes(data)) for conn, timestamp, data in reader.messages()]


def mcap_rows(bag: Path) -> list[Row]:
    """Every message through ``mcap`` + ``mcap-ros2-support``: decoding must succeed for each one."""
    (storage,) = bag.glob("*.mcap")
    rows = []
    with storage.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=True):
            assert decoded is not None
            rows.append((channel.topic, message.log_time, bytes(message.data)))
    return rows


def split_dirs(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))
