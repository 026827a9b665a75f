"""The dashboard's JSON (scripts' API) and its SSE stream: fleet, recordings, merged uploads, server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.protocol import Codec, UploadState
from core.server.state_store import UploadRecord
from dashboard import views
from tests.dashboard.conftest import bearer, heartbeat

STATE = "/dashboard/api/state"
MiB = 1024 * 1024


def recorder_status(state: str = "recording", **extra: Any) -> dict[str, Any]:
    """The shape of ``Recorder.status().to_dict()``."""
    return {
        "state": state,
        "robot_id": "robot-1",
        "session": "s1",
        "current_bag": "s1_0003",
        "storage": "mcap",
        "started_at": 1_700_000_000.0,
        "elapsed": 95.5,
        "current_bag_bytes": 3 * MiB,
        "topics": {"/imu": {"type": "sensor_msgs/msg/Imu", "messages": 1200, "bytes": 380000, "rate_hz": 200.0}},
        "messages_written": 1200,
        "bytes_written": 5 * MiB,
        "splits_done": 3,
        "dropped_messages": 0,
        "disk_free": 40 * 1024 * MiB,
        "last_error": None,
        **extra,
    }


def job(job_id: str, state: str = "uploading", **extra: Any) -> dict[str, Any]:
    """The shape of one ``NetworkManager.status()`` entry."""
    return {
        "job_id": job_id,
        "path": f"/data/{job_id}.mcap",
        "state": state,
        "size": 10 * MiB,
        "bytes_sent": 4 * MiB,
        "attempts": 0,
        "error": None,
        "upload_id": None,
        "rate": 2.0 * MiB,
        "eta": 3.0,
        "created": 1.0,
        "updated": 2.0,
        **extra,
    }


def add_record(app: Flask, upload_id: str, owner: str, state: UploadState, **extra: Any) -> None:
    now = time.time()
    received = extra.pop("_received", None)
    fields: dict[str, Any] = {
        "upload_id": upload_id,
        "owner": owner,
        "filename": f"{upload_id}.mcap",
        "filesize": 10 * MiB,
        "chunk_size": MiB,
        "chunks": 10,
        "created_at": now,
        "updated_at": now,
        "state": state,
        **extra,
    }
    store = app.extensions["state_store"]
    store.create_upload(UploadRecord(**fields))
    for index, digest in (received or {}).items():
        store.record_chunk(upload_id, index, digest, now)


@pytest.fixture
def open_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(auth_enabled=False)


@pytest.fixture
def open_client(open_app: Flask) -> FlaskClient:
    return open_app.test_client()


def state(client: FlaskClient, **params: Any) -> dict[str, Any]:
    reply = client.get(STATE, query_string=params)
    assert reply.status_code == 200, reply.json
    return reply.json


def test_fleet_row_shows_recorder_and_upload_queue(open_client: FlaskClient) -> None:
    heartbeat(open_client, "robot-1", "", recorder=recorder_status(), uploads=[job("a"), job("b", "queued")])
    (row,) = state(open_client)["fleet"]
    assert row["online"] is True
    assert row["recording_state"] == "recording"
    assert row["current_bag"] == "s1_0003"
    assert row["current_bag_bytes"] == 3 * MiB
    assert row["elapsed"] == 95.5
    assert row["disk_free"] == 40 * 1024 * MiB
    assert row["queue_length"] == 2
    assert row["upload_rate"] == 2.0 * MiB
    assert row["splits"] == 3
    assert row["topics"] == [
        {"name": "/imu", "type": "sensor_msgs/msg/Imu", "count": 1200, "rate": 200.0, "bytes": 380000}
    ]


def test_robot_goes_offline_after_the_configured_silence(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False, robot_offline_after=0.0).test_client()
    heartbeat(client, "robot-1", "", recorder=recorder_status(), uploads=[job("a")])
    time.sleep(0.01)
    document = state(client)
    assert document["fleet"][0]["online"] is False
    (upload,) = document["uploads"]["items"]
    assert (upload["state"], upload["reason"]) == ("stalled", "robot offline")


def test_server_record_and_client_job_merge_into_one_upload(open_app: Flask, open_client: FlaskClient) -> None:
    add_record(open_app, "u1", "robot-1", UploadState.UPLOADING, _received={0: "x" * 64, 1: "y" * 64})
    heartbeat(open_client, "robot-1", "", uploads=[job("a", upload_id="u1", bytes_sent=3 * MiB, attempts=2)])
    (upload,) = state(open_client)["uploads"]["items"]
    assert upload["upload_id"] == "u1"
    assert upload["state"] == "uploading"
    assert upload["bytes_done"] == 3 * MiB
    assert upload["progress"] == pytest.approx(0.3)
    assert (upload["rate"], upload["eta"], upload["retries"]) == (2.0 * MiB, 3.0, 2)


def test_retrying_client_job_shows_stalled_with_the_error(open_client: FlaskClient) -> None:
    heartbeat(open_client, "robot-1", "", uploads=[job("a", error="ConnectionError: reset by peer", attempts=3)])
    (upload,) = state(open_client)["uploads"]["items"]
    assert upload["state"] == "stalled"
    assert upload["reason"] == "ConnectionError: reset by peer"


def test_completed_upload_offers_size_ratio_and_download(open_app: Flask, open_client: FlaskClient) -> None:
    add_record(open_app, "u2", "robot-1", UploadState.COMPLETE, stored_size=4 * MiB, codec=Codec.ZSTD, verified=True)
    (upload,) = state(open_client)["uploads"]["items"]
    assert upload["state"] == "complete"
    assert upload["progress"] == 1.0
    assert upload["compression_ratio"] == 2.5
    assert upload["download"] is True
    assert state(open_client)["server"]["storage"]["stored_bytes"] == 4 * MiB


def test_failed_upload_carries_its_reason(open_app: Flask, open_client: FlaskClient) -> None:
    add_record(open_app, "u3", "robot-1", UploadState.FAILED, error_code="checksum_mismatch", error_message="bad")
    (upload,) = state(open_client)["uploads"]["items"]
    assert (upload["state"], upload["reason"]) == ("failed", "bad")


def test_fifty_robots_and_five_hundred_uploads_filter_and_paginate(open_client: FlaskClient) -> None:
    for r in range(50):
        jobs = [job(f"r{r}-{i}", "complete" if i % 2 else "queued") for i in range(10)]
        heartbeat(open_client, f"robot-{r:02d}", "", recorder=recorder_status(), uploads=jobs)
    document = state(open_client)
    assert len(document["fleet"]) == 50
    assert document["uploads"]["total"] == 500
    assert len(document["uploads"]["items"]) == 50
    assert document["uploads"]["counts"]["queued"] == 250
    page = state(open_client, robot="robot-07", state="queued", limit=3, offset=3)["uploads"]
    assert page["total"] == 5
    assert [u["robot_id"] for u in page["items"]] == ["robot-07"] * 2
    assert {u["state"] for u in page["items"]} == {"queued"}


@pytest.mark.parametrize("params", [{"state": "bogus"}, {"limit": "x"}, {"offset": "-"}])
def test_bad_filters_get_a_json_400(open_client: FlaskClient, params: dict[str, str]) -> None:
    reply = open_client.get(STATE, query_string=params)
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "invalid_field"


def test_server_section_counts_requests_and_429s(make_app: Callable[..., Flask], robot_key: str) -> None:
    app = make_app(auth_enabled=True, ratelimit_enabled=True, heartbeat_rate_limit="2 per minute")
    client = app.test_client()
    for _ in range(3):
        heartbeat(client, "robot-1", robot_key)
    requests = client.get(STATE, headers={"X-API-Key": ""}).json  # 401: not counted as a robot request
    assert requests["success"] is False
    app.extensions[views.METRICS_EXTENSION].flush()
    document = views_state(app)
    assert document["server"]["requests"]["requests"] == 3
    assert document["server"]["requests"]["rate_limited"] == 1


def views_state(app: Flask) -> dict[str, Any]:
    from dashboard.snapshot import UploadFilter

    with app.test_request_context():
        return views.state_document(UploadFilter())


def sse_events(body: str) -> list[tuple[str, str]]:
    events = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], lines.get("data", "")))
    return events


def test_event_stream_sends_state_and_ends_with_bye(make_app: Callable[..., Flask]) -> None:
    app = make_app(auth_enabled=False, sse_max_seconds=0.3, sse_interval=0.05)
    # The request chart moves on every 10 s bucket (a real change, re-sent); keep the stream inside one.
    app.extensions[views.METRICS_EXTENSION].clock = lambda: 1_000_000.0
    client = app.test_client()
    heartbeat(client, "robot-1", "", recorder=recorder_status())
    reply = client.get("/dashboard/events")
    assert reply.mimetype == "text/event-stream"
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.get_data(as_text=True)
    assert body.startswith("retry: ")
    events = sse_events(body)
    assert events[0][0] == "state"
    assert json.loads(events[0][1])["fleet"][0]["robot_id"] == "robot-1"
    assert events[-1][0] == "bye"
    # Unchanged state is not re-sent every tick.
    assert [name for name, _ in events].count("state") == 1


def test_event_stream_sends_keepalive_comments(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "SSE_KEEPALIVE_SECONDS", 0.05)
    client = make_app(auth_enabled=False, sse_max_seconds=0.3, sse_interval=0.06).test_client()
    assert ": keepalive" in client.get("/dashboard/events").get_data(as_text=True)


def test_event_stream_needs_sign_in(client: FlaskClient) -> None:
    assert client.get("/dashboard/events").status_code == 401


def test_scripts_read_state_with_a_key(client: FlaskClient, admin_key: str) -> None:
    document = client.get(STATE, headers=bearer(admin_key)).json
    assert set(document) >= {"server", "fleet", "uploads", "commands", "server_time"}
