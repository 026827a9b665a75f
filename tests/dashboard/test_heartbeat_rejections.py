"""A refused heartbeat (too large, malformed, bad key) is recorded, and the dashboard says why the robot is silent."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.server.keys import KeyStore
from core.server.robots import robot_store
from dashboard.snapshot import robot_row
from tests.dashboard.conftest import bearer, heartbeat


def rejection_of(app: Flask, robot_id: str) -> Any:
    return {r.robot_id: r for r in robot_store(app).robots()}[robot_id].rejection


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        (lambda c, key: c.post("/robots/robot-1/heartbeat", data=b"x" * 70_000, headers=bearer(key)), 413, "payload"),
        (lambda c, key: c.post("/robots/robot-1/heartbeat", data=b"[1, 2", headers=bearer(key)), 400, "invalid_json"),
        (lambda c, _key: c.post("/robots/robot-1/heartbeat", json={}, headers=bearer("rbk_nope")), 401, "unauth"),
    ],
    ids=["too-large", "malformed", "bad-key"],
)
def test_a_refused_heartbeat_is_recorded_for_a_known_robot(
    app: Flask, client: FlaskClient, robot_key: str, send: Any, status: int, code: str
) -> None:
    assert heartbeat(client, "robot-1", robot_key, recorder={"state": "recording"}).status_code == 200

    reply = send(client, robot_key)

    assert reply.status_code == status
    rejection = rejection_of(app, "robot-1")
    assert rejection is not None
    assert rejection.status == status
    assert rejection.reason.startswith(code)


def test_a_strangers_refused_heartbeats_create_no_robot(app: Flask, client: FlaskClient) -> None:
    client.post("/robots/ghost/heartbeat", json={}, headers=bearer("rbk_nope"))

    assert robot_store(app).robots() == []


def test_the_fleet_row_says_heartbeat_rejected_until_a_heartbeat_gets_through(
    app: Flask, client: FlaskClient, robot_key: str
) -> None:
    heartbeat(client, "robot-1", robot_key, recorder={"state": "recording", "current_bag": "run_3.mcap"})
    client.post("/robots/robot-1/heartbeat", data=b"x" * 70_000, headers=bearer(robot_key))
    (robot,) = robot_store(app).robots()

    row = robot_row(robot, now=robot.last_seen + 600, offline_after=30)

    assert row["online"] is False
    assert row["heartbeat_rejected"]["status"] == 413
    assert row["last_error"].startswith("heartbeat rejected: payload_too_large")

    heartbeat(client, "robot-1", robot_key, recorder={"state": "recording"})
    (robot,) = robot_store(app).robots()
    healed = robot_row(robot, now=robot.last_seen, offline_after=30)
    assert healed["heartbeat_rejected"] is None
    assert healed["last_error"] is None


def test_a_robot_reporting_for_another_is_refused_and_recorded_there(
    app: Flask, client: FlaskClient, robot_key: str, keys: KeyStore, admin_key: str
) -> None:
    heartbeat(client, "robot-2", admin_key, recorder={})

    assert heartbeat(client, "robot-2", robot_key).status_code == 403

    assert rejection_of(app, "robot-2").status == 403
