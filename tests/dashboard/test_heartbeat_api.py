"""The heartbeat route: robots report status, receive operator commands and acknowledge them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.protocol import CommandState, RobotAction
from core.server.robots import Command, SQLRobotStore, robot_store
from tests.dashboard.conftest import bearer, heartbeat


@pytest.fixture
def make_app(state_store_uri: str, make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """Every heartbeat test runs against the embedded SQLite and against PostgreSQL (STATE_STORE_URI)."""

    def make(**overrides: Any) -> Flask:
        overrides.setdefault("background_jobs", False)  # no uploads here
        overrides.setdefault("state_store_uri", state_store_uri)
        app = make_app(**overrides)
        assert isinstance(robot_store(app), SQLRobotStore)
        return app

    return make


def queue(app: Flask, robot_id: str, action: RobotAction, created_at: float | None = None) -> Command:
    now = time.time() if created_at is None else created_at
    command = Command(robot_id, action, created_at=now, updated_at=now, issued_by="test")
    robot_store(app).enqueue(command)
    return command


def test_heartbeat_stores_latest_status_with_last_seen(app: Flask, client: FlaskClient, robot_key: str) -> None:
    before = time.time()
    reply = heartbeat(client, "robot-1", robot_key, recorder={"state": "recording"}, uploads=[])
    assert reply.status_code == 200
    assert reply.json["success"] is True
    assert reply.json["commands"] == []
    assert reply.json["interval"] == 5.0
    heartbeat(client, "robot-1", robot_key, recorder={"state": "paused"}, uploads=[])
    (robot,) = robot_store(app).robots()
    assert robot.robot_id == "robot-1"
    assert robot.status["recorder"] == {"state": "paused"}
    assert robot.last_seen >= before


def test_command_is_delivered_until_acknowledged_then_done(app: Flask, client: FlaskClient, robot_key: str) -> None:
    command = queue(app, "robot-1", RobotAction.PAUSE)
    first = heartbeat(client, "robot-1", robot_key).json["commands"]
    again = heartbeat(client, "robot-1", robot_key).json["commands"]
    assert [c["id"] for c in first] == [command.id] == [c["id"] for c in again]
    assert first[0]["action"] == "pause"
    reply = heartbeat(client, "robot-1", robot_key, acks=[{"id": command.id, "ok": True, "message": "paused"}])
    assert reply.json["commands"] == []
    (stored,) = robot_store(app).recent_commands()
    assert (stored.state, stored.message) == (CommandState.DONE, "paused")


def test_failed_acknowledgement_keeps_the_robots_reason(app: Flask, client: FlaskClient, robot_key: str) -> None:
    command = queue(app, "robot-1", RobotAction.RESUME)
    heartbeat(client, "robot-1", robot_key)
    heartbeat(
        client, "robot-1", robot_key, acks=[{"id": command.id, "ok": False, "message": "cannot resume while stopped"}]
    )
    (stored,) = robot_store(app).recent_commands()
    assert stored.state == CommandState.FAILED
    assert stored.message == "cannot resume while stopped"


def test_old_commands_expire_instead_of_running_late(app: Flask, client: FlaskClient, robot_key: str) -> None:
    queue(app, "robot-1", RobotAction.START, created_at=time.time() - 3600)
    assert heartbeat(client, "robot-1", robot_key).json["commands"] == []
    (stored,) = robot_store(app).recent_commands()
    assert stored.state == CommandState.EXPIRED


def test_a_robot_cannot_acknowledge_or_receive_another_robots_commands(
    app: Flask, client: FlaskClient, keys: object, robot_key: str
) -> None:
    other = keys.create("robot-2").token  # type: ignore[attr-defined]
    command = queue(app, "robot-1", RobotAction.STOP)
    assert heartbeat(client, "robot-2", other, acks=[{"id": command.id, "ok": True}]).json["commands"] == []
    assert [c["id"] for c in heartbeat(client, "robot-1", robot_key).json["commands"]] == [command.id]


def test_robot_may_only_report_for_itself(client: FlaskClient, robot_key: str) -> None:
    reply = heartbeat(client, "robot-2", robot_key)
    assert reply.status_code == 403
    assert reply.json["error"]["code"] == "forbidden"


def test_admin_may_report_for_any_robot(client: FlaskClient, admin_key: str) -> None:
    assert heartbeat(client, "any-robot", admin_key).status_code == 200


def test_heartbeat_without_key_is_rejected(client: FlaskClient) -> None:
    reply = client.post("/robots/robot-1/heartbeat", json={})
    assert reply.status_code == 401
    assert reply.json["success"] is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"recorder": "recording"}', "invalid_field"),
        (b'{"acks": {"id": "x"}}', "invalid_field"),
        (b'{"acks": [{"ok": true}]}', "invalid_field"),
        (b'{"acks": [{"id": "x", "ok": true, "message": {}}]}', "invalid_field"),
        (b'{"acks": [{"id": "x", "ok": "yes"}]}', "invalid_field"),
    ],
)
def test_bad_heartbeats_get_a_json_400(client: FlaskClient, robot_key: str, body: bytes, code: str) -> None:
    reply = client.post(
        "/robots/robot-1/heartbeat", data=body, headers={**bearer(robot_key), "Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == code


def test_robot_ids_with_control_characters_are_refused(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False).test_client()
    reply = client.post("/robots/bad%01name/heartbeat", json={})
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "invalid_field"


def test_heartbeats_have_their_own_rate_limit(make_app: Callable[..., Flask], robot_key: str) -> None:
    client = make_app(auth_enabled=True, ratelimit_enabled=True, heartbeat_rate_limit="3 per minute").test_client()
    statuses = [heartbeat(client, "robot-1", robot_key).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
