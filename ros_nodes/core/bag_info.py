"""Describe a finished bag from its ``metadata.yaml`` (no pass over the messages), for hand-off after restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ros_nodes.core.errors import RecorderError
from ros_nodes.core.handoff import METADATA_FILE, BagInfo


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        document = YAML(typ="safe").load((path / METADATA_FILE).read_text())
        info: dict[str, Any] = document["rosbag2_bagfile_information"]
    except (OSError, YAMLError, KeyError, TypeError) as err:
        msg = f"cannot read {path / METADATA_FILE}: {err}"
        raise RecorderError(msg) from err
    return info


def describe_bag(path: Path, *, robot_id: str, recovered: bool = False, source: str = "recorder") -> BagInfo:
    """BagInfo of a bag folder (from its metadata) or of a loose storage file (name and robot only)."""
    if path.is_file():
        storage = "sqlite3" if path.suffix == ".db3" else "mcap"
        return BagInfo(bag=path.stem, path=path, robot_id=robot_id, session="", storage=storage, source=source)
    meta = read_metadata(path)
    custom = meta.get("custom_data") or {}
    start = int(meta.get("starting_time", {}).get("nanoseconds_since_epoch", 0))
    duration = int(meta.get("duration", {}).get("nanoseconds", 0))
    topics = {
        entry["topic_metadata"]["name"]: int(entry.get("message_count", 0))
        for entry in meta.get("topics_with_message_count") or []
    }
    return BagInfo(
        bag=path.name,
        path=path,
        robot_id=custom.get("robot_id", robot_id),
        session=custom.get("session", ""),
        split_index=int(custom.get("split_index", 0)),
        storage=meta.get("storage_identifier", ""),
        start_ns=start,
        end_ns=start + duration,
        message_count=int(meta.get("message_count", 0)),
        topics=topics,
        recovered=recovered or custom.get("recovered") == "true",
        source=source,
    )
