"""Upload rows of the state document: a bag's files grouped, full names and times, a robot's 429 waits."""

from __future__ import annotations

from typing import Any

from core.protocol import Codec, UploadState
from core.server.robots import RobotStatus
from core.server.state_store import UploadRecord
from dashboard import snapshot

NOW = 1_800_000_000.0


def record(upload_id: str, filename: str, bag: str | None, part: str, created: float, **fields: Any) -> UploadRecord:
    meta = {"bag": bag, "split_index": int(bag[-4:]), "part": part} if bag else {}
    return UploadRecord(
        upload_id=upload_id,
        owner="robot-1",
        filename=filename,
        filesize=100,
        chunk_size=100,
        chunks=1,
        created_at=created,
        updated_at=created + 5,
        metadata=meta,
        **fields,
    )


def rows(records: list[UploadRecord], robots: list[RobotStatus] | None = None) -> list[dict[str, Any]]:
    robots = robots or []
    fleet = [snapshot.robot_row(r, NOW, 30) for r in robots]
    entries = {r.robot_id: snapshot._client_uploads(r.status) for r in robots}
    return snapshot.merge_uploads(records, {}, fleet, entries)


def heartbeat(*items: dict[str, Any]) -> RobotStatus:
    uploads = {"items": list(items), "queue_length": len(items)}
    return RobotStatus("robot-1", {"recorder": {"state": "recording"}, "uploads": uploads}, NOW - 1, NOW - 100)


def done(**extra: Any) -> dict[str, Any]:
    return {"state": UploadState.COMPLETE, "verified": True, "blob_id": "b" * 32, "codec": Codec.NONE, **extra}


def test_a_bags_metadata_yaml_follows_its_storage_file_whatever_finished_first() -> None:
    bag7, bag8 = "robot-1_S_0007", "robot-1_S_0008"
    listed = rows(
        [
            record("m7" * 16, "metadata.yaml", bag7, "metadata", NOW - 50, **done()),
            record("s8" * 16, f"{bag8}_0.mcap", bag8, "storage", NOW - 40, **done()),
            record("m8" * 16, "metadata.yaml", bag8, "metadata", NOW - 30, **done()),
            record("s7" * 16, f"{bag7}_0.mcap", bag7, "storage", NOW - 60, **done()),
            record("xx" * 16, "notes.txt", None, "", NOW - 10, **done()),
        ]
    )

    assert [(r["filename"], r["group"], r["group_index"]) for r in listed] == [
        ("notes.txt", None, 0),
        (f"{bag8}_0.mcap", bag8, 0),
        ("metadata.yaml", bag8, 1),
        (f"{bag7}_0.mcap", bag7, 0),
        ("metadata.yaml", bag7, 1),
    ]
    head = listed[1]
    assert head["split"] == 8
    assert head["started_at"] == NOW - 40
    assert head["finished_at"] == NOW - 35


def test_an_unfinished_upload_has_no_finished_time() -> None:
    (row,) = rows([record("u1" * 16, "a.mcap", "robot-1_S_0001", "storage", NOW - 5)])

    assert row["started_at"] == NOW - 5
    assert row["finished_at"] is None


def test_an_upload_waiting_out_a_429_shows_the_reason_and_the_retry_time() -> None:
    """The client's heartbeat (core/client/status.py): items with ``blocked`` and ``blocked_until``."""
    robot = heartbeat(
        {"job_id": "j1", "name": "a.mcap", "state": "uploading", "size": 10, "bytes_sent": 4,
         "blocked": "rate_limited", "blocked_until": NOW + 40},
        {"job_id": "j2", "name": "b.mcap", "state": "queued", "size": 10},
    )  # fmt: skip

    waiting, queued = rows([], [robot])
    fleet = snapshot.robot_row(robot, NOW, 30)

    assert waiting["blocked_reason"] == "rate_limited"
    assert waiting["retry_at"] == NOW + 40
    assert waiting["state"] == "stalled"
    assert queued["blocked_reason"] is None
    assert fleet["uploads_blocked"] == {"count": 1, "reason": "rate_limited", "retry_at": NOW + 40}


def test_retry_in_seconds_is_turned_into_a_time_from_the_heartbeats_arrival() -> None:
    entry = {"state": "queued", "blocked_reason": "rate_limited", "retry_in": 30}

    assert snapshot.blocked(entry, reported_at=NOW) == {"reason": "rate_limited", "retry_at": NOW + 30}
    assert snapshot.blocked({"state": "queued"}, reported_at=NOW) is None


def test_a_client_job_keeps_its_job_identity_while_the_server_assigns_the_upload_id() -> None:
    """A row's ``key`` is the upload id once there is one; ``job`` names the robot's job throughout.

    Before init the server has no id to key the row by, so the key changes once; whoever follows
    one upload from the queue on (the dashboard's tests, an operator's script) follows ``job``.
    """
    initializing = {"job_id": "j1", "name": "a.mcap", "state": "initializing", "size": 100}
    with_id = {**initializing, "state": "uploading", "upload_id": "u1" * 16, "bytes_sent": 40}
    server = record("u1" * 16, "a.mcap", "robot-1_S_0001", "storage", NOW - 5)

    (before,) = rows([], [heartbeat(initializing)])
    (known,) = rows([], [heartbeat(with_id)])
    (merged,) = rows([server], [heartbeat(with_id)])
    (server_only,) = rows([server])

    assert before["key"] == "robot-1:j1"
    assert known["key"] == merged["key"] == "u1" * 16
    assert before["job"] == known["job"] == merged["job"] == "robot-1:j1"
    assert server_only["job"] is None
