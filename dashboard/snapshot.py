"""The dashboard's one JSON document: fleet, recordings, uploads and server, built per request.

Robots report free-form snapshots (``Recorder.status()``, ``NetworkManager.status()``);
this module turns them, the server's upload records and the request counters into
a stable schema. The page renders it, SSE pushes it, and scripts read it from
``/dashboard/api/state``: what the page shows and what curl shows never disagree.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from core.protocol import TERMINAL_STATES, UploadState, chunk_length
from core.server.robots import Command, RobotStatus
from core.server.state_store import StateStore, UploadQuery, UploadRecord

# What the Uploads table shows, in the order the filter offers them.
UPLOAD_STATES = ("queued", "uploading", "stalled", "finalizing", "complete", "failed", "aborted")
_ACTIVE_ORDER = {"uploading": 0, "stalled": 1, "finalizing": 2, "queued": 3}
# Client-side state names (NetworkManager) → dashboard states; unknown names show as uploading.
_CLIENT_STATES = {
    "queued": "queued",
    "pending": "queued",
    "hashing": "queued",
    "waiting": "queued",
    "initializing": "uploading",
    "uploading": "uploading",
    "running": "uploading",
    "sending": "uploading",
    "stalled": "stalled",
    "retrying": "stalled",
    "parked": "stalled",
    "backoff": "stalled",
    "finalizing": "finalizing",
    "verifying": "finalizing",
    "complete": "complete",
    "completed": "complete",
    "done": "complete",
    "verified": "complete",
    "failed": "failed",
    "error": "failed",
    "aborted": "aborted",
    "cancelled": "aborted",
}
MAX_SERVER_UPLOADS = 2000
MAX_PAGE = 500


@dataclass(frozen=True)
class UploadFilter:
    robot: str | None = None
    state: str | None = None
    limit: int = 50
    offset: int = 0


def pick(source: Any, *names: str, default: Any = None) -> Any:
    """The first present, non-None field among ``names`` (robots' snapshots name things differently)."""
    if not isinstance(source, Mapping):
        return default
    for name in names:
        value = source.get(name)
        if value is not None:
            return value
    return default


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def text(value: Any, limit: int = 500) -> str | None:
    return None if value is None else str(value)[:limit]


# --- robots --------------------------------------------------------------------------------
def _client_uploads(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    uploads = status.get("uploads")
    entries = pick(uploads, "uploads", "items", "queue", default=uploads if isinstance(uploads, list) else [])
    if isinstance(entries, Mapping):
        entries = [{"key": key, **value} for key, value in entries.items() if isinstance(value, Mapping)]
    return [entry for entry in entries if isinstance(entry, Mapping)] if isinstance(entries, list) else []


def _client_state(entry: Mapping[str, Any]) -> str:
    raw = str(pick(entry, "state", "status", default="queued")).lower()
    state = _CLIENT_STATES.get(raw, "uploading")
    # The client keeps the last error while it retries, and clears it on the next chunk that gets through.
    return "stalled" if state == "uploading" and pick(entry, "error", "last_error") else state


def _topics(recorder: Mapping[str, Any]) -> list[dict[str, Any]]:
    topics = pick(recorder, "topics", default=[])
    if isinstance(topics, Mapping):
        topics = [
            {"name": name, **value} if isinstance(value, Mapping) else {"name": name} for name, value in topics.items()
        ]
    rows = []
    for topic in topics if isinstance(topics, list) else []:
        if isinstance(topic, Mapping):
            rows.append(
                {
                    "name": text(pick(topic, "name", "topic", default="?")),
                    "type": text(pick(topic, "type", "msgtype", "message_type")),
                    "count": number(pick(topic, "count", "messages", "message_count")),
                    "rate": number(pick(topic, "rate", "hz", "rate_hz")),
                    "bytes": number(pick(topic, "bytes", "bytes_written")),
                }
            )
    return rows


def blocked(entry: Mapping[str, Any], reported_at: float) -> dict[str, Any] | None:
    """Why an upload waits and until when, if the robot says so (e.g. a 429 it waits out); None otherwise.

    The client reports ``blocked_reason`` (``rate_limited``…, or ``blocked``
    as a string) and ``retry_at`` (epoch seconds) or ``retry_in`` (seconds from
    the heartbeat, which the server turns into a time using the report's arrival).
    """
    reason = pick(entry, "blocked_reason", "blocked")
    if isinstance(reason, Mapping):  # {"reason": …, "retry_at": …}
        entry, reason = reason, pick(reason, "reason", "code")
    if not reason or reason is True:
        reason = "blocked" if reason is True else None
    if reason is None:
        return None
    retry_at = number(pick(entry, "retry_at", "blocked_until"))
    retry_in = number(pick(entry, "retry_in", "retry_after"))
    if retry_at is None and retry_in is not None:
        retry_at = reported_at + retry_in
    return {"reason": text(reason, 80), "retry_at": retry_at}


def robot_row(robot: RobotStatus, now: float, offline_after: float) -> dict[str, Any]:
    """One Fleet row and its Recordings card, from the robot's latest heartbeat."""
    status = robot.status
    recorder = status.get("recorder") if isinstance(status.get("recorder"), Mapping) else {}
    uploads = status.get("uploads") if isinstance(status.get("uploads"), Mapping) else {}
    host = status.get("host") if isinstance(status.get("host"), Mapping) else {}
    entries = _client_uploads(status)
    active = [e for e in entries if _client_state(e) not in ("complete", "failed", "aborted")]
    rate = number(pick(uploads, "rate", "upload_rate", "bytes_per_second"))
    if rate is None:
        rate = sum(
            number(pick(e, "rate", "bytes_per_second")) or 0.0 for e in active if _client_state(e) == "uploading"
        )
    errors = [pick(e, "error", "last_error", "reason") for e in entries if pick(e, "error", "last_error", "reason")]
    last_error = (
        pick(recorder, "error", "last_error")
        or pick(uploads, "last_error", "error")
        or (errors[-1] if errors else None)
    )
    # A refusal newer than the last heartbeat that got through explains the silence better than any old error.
    rejection = robot.rejection if robot.rejection is not None and robot.rejection.at > robot.last_seen else None
    if rejection is not None:
        last_error = f"heartbeat rejected: {rejection.reason}"
    waits = [b for b in (blocked(e, robot.last_seen) for e in active) if b is not None]
    bag = pick(recorder, "current_bag", "bag", "current_split")
    bag_name = pick(bag, "name", "path") if isinstance(bag, Mapping) else bag
    started = number(pick(recorder, "started_at", "start_time"))
    elapsed = number(pick(recorder, "elapsed", "elapsed_seconds", "duration"))
    if elapsed is None and started is not None:
        elapsed = max(0.0, robot.last_seen - started)
    return {
        "robot_id": robot.robot_id,
        "online": now - robot.last_seen <= offline_after,
        "last_seen": robot.last_seen,
        "recording_state": text(pick(recorder, "state", default="unknown" if recorder else "no recorder"), 40),
        "current_bag": text(bag_name),
        "current_bag_bytes": number(
            pick(bag, "bytes", "size") if isinstance(bag, Mapping) else pick(recorder, "current_bag_bytes", "bag_bytes")
        ),
        "disk_free": number(pick(recorder, "disk_free", "disk_free_bytes") or pick(host, "disk_free")),
        "queue_length": int(number(pick(uploads, "queue_length", "queued", "pending")) or len(active)),
        "upload_rate": rate,
        "last_error": text(last_error),
        "topics": _topics(recorder),
        "bytes_written": number(pick(recorder, "bytes_written", "bytes", "total_bytes")),
        "splits": number(pick(recorder, "splits", "split_count", "splits_done")),
        "elapsed": elapsed,
        "dropped": number(pick(recorder, "dropped", "overflow", "dropped_messages")),
        "heartbeat_rejected": {"at": rejection.at, "status": rejection.status, "reason": text(rejection.reason)}
        if rejection
        else None,
        "uploads_blocked": {"count": len(waits), "reason": waits[0]["reason"], "retry_at": waits[0]["retry_at"]}
        if waits
        else None,
    }


# --- uploads -------------------------------------------------------------------------------
_ENDED = {"complete", "failed", "aborted"}
METADATA_PART = "metadata"  # the recorder's ``part`` of a bag's metadata.yaml (ros_nodes.core.handoff)


def bag_fields(metadata: Any) -> dict[str, Any]:
    """Which bag (and split) a file belongs to, from the recorder's upload metadata; None for other files."""
    meta = metadata if isinstance(metadata, Mapping) else {}
    split = number(pick(meta, "split_index", "split"))
    return {
        "bag": text(pick(meta, "bag", "bag_name"), 200),
        "split": int(split) if split is not None else None,
        "part": text(pick(meta, "part"), 20),
    }


def _server_row(record: UploadRecord, received: Mapping[str, int]) -> dict[str, Any]:
    done = received.get(record.upload_id) if record.state == UploadState.UPLOADING else record.filesize
    ratio = record.filesize / record.stored_size if record.stored_size else None
    return {
        **bag_fields(record.metadata),
        "started_at": record.created_at,
        "finished_at": record.updated_at if record.state.value in _ENDED else None,
        "blocked_reason": None,
        "retry_at": None,
        "key": record.upload_id,
        "job": None,
        "upload_id": record.upload_id,
        "robot_id": record.owner,
        "filename": text(record.filename),
        "state": record.state.value,
        "reason": text(record.error_message or record.error_code),
        "bytes_total": record.filesize if record.size_known else None,  # else only MAX_FILE_SIZE, a bound
        "bytes_done": done,
        "rate": None,
        "eta": None,
        "retries": None,
        "stored_size": record.stored_size,
        "compression_ratio": round(ratio, 3) if ratio else None,
        "codec": record.codec.value if record.codec else None,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "download": record.state == UploadState.COMPLETE,
        "finalize_progress": record.progress / record.filesize
        if record.state == UploadState.FINALIZING and record.filesize
        else None,
    }


def _merge_client(
    row: dict[str, Any] | None, robot_id: str, entry: Mapping[str, Any], online: bool, reported_at: float = 0.0
) -> dict[str, Any]:
    """Client knowledge (rate, ETA, retries, stalls) on top of the server's record, if any."""
    state = _client_state(entry)
    total = number(pick(entry, "filesize", "size", "bytes_total", "total_bytes"))
    sent = number(pick(entry, "bytes_sent", "bytes_done", "sent", "uploaded_bytes"))
    job = f"{robot_id}:{pick(entry, 'job_id', 'key', 'id', 'file_path', 'path', default='?')}"
    upload_id = text(pick(entry, "upload_id"))
    merged = (
        dict(row)
        if row
        else {
            "key": upload_id or job,
            "upload_id": upload_id,
            "robot_id": robot_id,
            "filename": text(
                PurePosixPath(str(pick(entry, "filename", "name", "file_path", "path", default="?"))).name
            ),
            "reason": None,
            "bytes_total": total,
            "bytes_done": None,
            "stored_size": None,
            "compression_ratio": None,
            "codec": None,
            "created_at": number(pick(entry, "created_at", "created", "added_at")),
            "updated_at": number(pick(entry, "updated_at", "updated")),
            "download": False,
            **bag_fields(pick(entry, "metadata")),
            "started_at": number(pick(entry, "started_at", "created_at", "created", "added_at")),
            "finished_at": None,
        }
    )
    merged["job"] = job
    if not row or row["state"] not in {s.value for s in TERMINAL_STATES}:
        merged["state"] = state if online or state in ("complete", "failed", "aborted") else "stalled"
        if not online and state not in ("complete", "failed", "aborted"):
            merged["reason"] = "robot offline"
    if merged.get("bytes_total") is None:
        merged["bytes_total"] = total
    if sent is not None:
        merged["bytes_done"] = max(sent, merged.get("bytes_done") or 0)
    merged["rate"] = number(pick(entry, "rate", "bytes_per_second"))
    merged["eta"] = number(pick(entry, "eta", "eta_seconds"))
    merged["retries"] = number(pick(entry, "retries", "attempts", "retry_count"))
    reason = pick(entry, "error", "reason", "last_error")
    if reason and merged["state"] in ("stalled", "failed", "queued"):
        merged["reason"] = text(reason)
    merged["priority"] = number(pick(entry, "priority"))
    wait = blocked(entry, reported_at) if merged["state"] not in ("complete", "failed", "aborted") else None
    merged["blocked_reason"] = wait["reason"] if wait else None
    merged["retry_at"] = wait["retry_at"] if wait else None
    if wait:
        merged["state"] = "stalled" if merged["state"] == "uploading" else merged["state"]
        merged["reason"] = wait["reason"]
    return merged


def merge_uploads(
    records: Iterable[UploadRecord],
    received: Mapping[str, int],
    robots: Iterable[dict[str, Any]],
    client_entries: Mapping[str, list[Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Server records and robots' queues as one list: active first, then newest."""
    rows = {record.upload_id: _server_row(record, received) for record in records}
    online = {robot["robot_id"]: robot["online"] for robot in robots}
    seen = {robot["robot_id"]: robot["last_seen"] for robot in robots}
    for robot_id, entries in client_entries.items():
        for entry in entries:
            upload_id = pick(entry, "upload_id")
            merged = _merge_client(
                rows.get(upload_id) if upload_id else None,
                robot_id,
                entry,
                online.get(robot_id, False),
                seen.get(robot_id, 0.0),
            )
            rows[merged["upload_id"] or merged["key"]] = merged
    for row in rows.values():
        total, done = row.get("bytes_total"), row.get("bytes_done")
        row["progress"] = (
            min(1.0, done / total) if total and done is not None else (1.0 if row["state"] == "complete" else None)
        )
    ordered = sorted(
        rows.values(),
        key=lambda r: (_ACTIVE_ORDER.get(r["state"], 9), -(r.get("updated_at") or r.get("created_at") or 0)),
    )
    return group_bags(ordered)


def group_bags(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep each bag's files together where its first file sorts, storage files first, metadata.yaml last.

    Every bag uploads a storage file and a ``metadata.yaml`` named alike across
    splits; apart they read as unrelated rows. ``group`` names the bag and
    ``group_index`` is the file's place in it (0: the row that heads the group).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[tuple[str, str] | dict[str, Any]] = []
    for row in rows:
        if not row.get("bag"):
            order.append(row)
            continue
        key = (str(row["robot_id"]), str(row["bag"]))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(row)
    grouped: list[dict[str, Any]] = []
    for item in order:
        if isinstance(item, dict):
            grouped.append({**item, "group": None, "group_index": 0})
            continue
        files = sorted(groups[item], key=lambda r: r.get("part") == METADATA_PART)  # stable: storage files first
        grouped += [{**row, "group": item[1], "group_index": i} for i, row in enumerate(files)]
    return grouped


def page(rows: list[dict[str, Any]], flt: UploadFilter) -> dict[str, Any]:
    counts = dict.fromkeys(UPLOAD_STATES, 0)
    for row in rows:
        if flt.robot is None or row["robot_id"] == flt.robot:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
    chosen = [
        r
        for r in rows
        if (flt.robot is None or r["robot_id"] == flt.robot) and (flt.state is None or r["state"] == flt.state)
    ]
    return {
        "total": len(chosen),
        "offset": flt.offset,
        "limit": flt.limit,
        "counts": counts,
        "items": chosen[flt.offset : flt.offset + flt.limit],
    }


# --- the document ----------------------------------------------------------------------------
def storage(path: Any) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"total": None, "used": None, "free": None}
    return {"total": usage.total, "used": usage.used, "free": usage.free}


def build(
    *,
    robots: list[RobotStatus],
    records: list[UploadRecord],
    received: Mapping[str, int],
    commands: list[Command],
    metrics: dict[str, Any],
    storage_info: dict[str, Any],
    offline_after: float,
    flt: UploadFilter,
    version: str,
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    fleet = [robot_row(robot, now, offline_after) for robot in robots]
    entries = {robot.robot_id: _client_uploads(robot.status) for robot in robots}
    uploads = merge_uploads(records, received, fleet, entries)
    stored = sum(r.stored_size or 0 for r in records if r.state == UploadState.COMPLETE)
    active = sum(1 for r in records if r.state in (UploadState.UPLOADING, UploadState.FINALIZING))
    return {
        "server_time": now,
        "server": {
            "status": "ok" if storage_info.get("free") is not None else "degraded",
            "version": version,
            "storage": {**storage_info, "stored_bytes": stored},
            "active_uploads": active,
            "robots_online": sum(1 for r in fleet if r["online"]),
            "robots_total": len(fleet),
            "requests": metrics,
        },
        "fleet": fleet,
        "uploads": page(uploads, flt),
        "upload_states": list(UPLOAD_STATES),
        "commands": [c.as_json() for c in commands],
    }


def server_records(store: StateStore, robot: str | None) -> tuple[list[UploadRecord], dict[str, int]]:
    """The newest uploads (capped) and the bytes received so far of those still uploading."""
    records, _total = store.list_uploads(UploadQuery(owner=robot, limit=MAX_SERVER_UPLOADS, offset=0))
    received = {}
    for record in records:
        if record.state == UploadState.UPLOADING:
            indices = store.received_chunks(record.upload_id)
            received[record.upload_id] = sum(chunk_length(record.filesize, record.chunk_size, i) for i in indices)
    return records, received
