"""Recover a split whose recorder died before ``close()``: copy every complete MCAP chunk into a fresh bag.

rosbags' MCAP writer appends finished chunks (~1 MiB) as it goes, so a killed
recorder leaves a file that is valid up to its last complete chunk and lacks
only the summary. The ``mcap`` stream reader walks it record by record and
stops at the torn tail; the messages it yields are rewritten into a new,
indexed bag flagged ``recovered``. sqlite3 keeps a whole split in one
transaction, so a killed sqlite3 split holds nothing to recover: it is kept,
renamed, and reported.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zstandard
from mcap.exceptions import McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.rosbag2.metadata import parse_qos

from core.config import RecorderConfig
from ros_nodes.core.bag_writer import SIDECAR, SplitWriter, TopicInfo, typestore_for
from ros_nodes.core.errors import SalvageError
from ros_nodes.core.handoff import BagInfo

log = logging.getLogger(__name__)

RECOVERED_SUFFIX = "_recovered"
UNRECOVERABLE_SUFFIX = ".unrecoverable"


@dataclass(frozen=True)
class SalvageResult:
    info: BagInfo | None  # the recovered bag, None when nothing could be recovered
    lost_path: Path | None = None  # where an unrecoverable split was kept


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path / SIDECAR).read_text())
    except (OSError, ValueError) as err:
        msg = f"{path} has no readable {SIDECAR}: not a split written by this recorder"
        raise SalvageError(msg) from err
    return data


def salvage(path: Path, config: RecorderConfig) -> SalvageResult:
    """Recover the crashed split at ``path``; the crashed folder is removed once the new bag is closed."""
    sidecar = read_sidecar(path)
    info = BagInfo(
        bag=path.name + RECOVERED_SUFFIX,
        path=path.with_name(path.name + RECOVERED_SUFFIX),
        robot_id=sidecar["robot_id"],
        session=sidecar["session"],
        split_index=int(sidecar["split_index"]),
        storage=sidecar.get("storage", "mcap"),
        recovered=True,
    )
    storage_files = sorted(path.glob("*.mcap"))
    if info.storage != "mcap" or not storage_files:
        return _keep_unrecoverable(path, f"{info.storage} split holds no committed messages")
    if info.path.exists():
        # A previous salvage was killed before it finished: start it over.
        shutil.rmtree(info.path)
    split_config = replace(
        config,
        storage="mcap",
        bag_version=int(sidecar.get("bag_version", config.bag_version)),
        compression=sidecar.get("compression", config.compression),
        compression_mode=sidecar.get("compression_mode", config.compression_mode),
    )
    writer = SplitWriter(info, split_config, typestore_for(config.ros_distro))
    writer.open()
    try:
        torn = _copy_chunks(storage_files[0], writer, sidecar)
    except BaseException:
        writer.close()
        shutil.rmtree(info.path, ignore_errors=True)
        raise
    if info.message_count == 0:
        writer.close()
        shutil.rmtree(info.path)
        return _keep_unrecoverable(path, "no complete chunk was written before the crash")
    writer.close()
    shutil.rmtree(path)
    log.warning(
        "salvaged crashed split %s into %s: %d messages on %d topics (%s)",
        path.name,
        info.bag,
        info.message_count,
        len(info.topics),
        f"torn tail dropped: {torn}" if torn else "file was complete",
    )
    return SalvageResult(info)


def _copy_chunks(source: Path, writer: SplitWriter, sidecar: dict[str, Any]) -> str:
    """Stream complete records into ``writer``; returns why reading stopped early ("" at a clean end)."""
    hashes = {topic: conn.get("rihs01") for topic, conn in sidecar.get("connections", {}).items()}
    message_compressed = sidecar.get("compression") == "zstd" and sidecar.get("compression_mode") == "message"
    decompressor = zstandard.ZstdDecompressor() if message_compressed else None
    schemas: dict[int, Schema] = {}
    channels: dict[int, Any] = {}
    with source.open("rb") as stream:
        try:
            for record in StreamReader(stream, record_size_limit=None).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel) and record.id not in channels:
                    channels[record.id] = writer.add_topic(_topic_info(record, schemas, hashes))
                elif isinstance(record, Message) and record.channel_id in channels:
                    data = record.data
                    if decompressor is not None:
                        # The new writer compresses again: hand it the plain message.
                        data = decompressor.decompressobj().decompress(data)
                    writer.write(channels[record.channel_id], record.log_time, data)
        except (McapError, EOFError, ValueError, OSError) as err:
            return f"{type(err).__name__}: {err}"
    return ""


def _topic_info(channel: Channel, schemas: dict[int, Schema], hashes: dict[str, str | None]) -> TopicInfo:
    schema = schemas.get(channel.schema_id)
    if schema is None:
        msg = f"channel {channel.topic} refers to unknown schema {channel.schema_id}"
        raise SalvageError(msg)
    qos_text = channel.metadata.get("offered_qos_profiles", "")
    return TopicInfo(
        topic=channel.topic,
        msgtype=schema.name,
        qos=tuple(parse_qos(qos_text)) if qos_text else (),
        msgdef=schema.data.decode(),
        rihs01=hashes.get(channel.topic),
    )


def _keep_unrecoverable(path: Path, reason: str) -> SalvageResult:
    target = path.with_name(path.name + UNRECOVERABLE_SUFFIX)
    path.rename(target)
    log.error("crashed split %s could not be recovered (%s); kept as %s", path.name, reason, target)
    return SalvageResult(None, target)
