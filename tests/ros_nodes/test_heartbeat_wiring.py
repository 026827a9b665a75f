"""Every recorder entry point reports by heartbeat the same way: the wiring, tested without rclpy."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from core.config import RecorderConfig
from core.protocol import RobotAction, heartbeat_url
from core.server.keys import key_store_for
from ros_nodes.cli import add_recorder_options, make_heartbeat, recorder_commands
from ros_nodes.core.errors import RecorderError
from ros_nodes.core.recorder import Recorder
from tests.helpers.servers import GunicornServer

SERVER = "https://fleet.example:8443"


class Uploads:
    """The NetworkManager's ``status()``, as the heartbeat reads it."""

    def status(self) -> dict[str, Any]:
        return {"queue_length": 2, "uploads": []}


def options(*argv: str) -> argparse.Namespace:
    """The options both ``ros_nodes.recorder`` and ``ros_nodes.simulate`` accept."""
    parser = argparse.ArgumentParser()
    add_recorder_options(parser)
    return parser.parse_args(argv)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    config = RecorderConfig(output_dir=tmp_path / "bags", robot_id="rover-7", min_free_disk=0)
    running = Recorder(config)
    yield running
    running.close()


@pytest.mark.parametrize(
    "argv",
    [(), ("--heartbeat", "0", "--upload-url", f"{SERVER}/upload"), ("--heartbeat", "0", "--heartbeat-url", SERVER)],
)
def test_no_heartbeat_without_a_server_or_with_interval_zero(recorder: Recorder, argv: tuple[str, ...]) -> None:
    assert make_heartbeat(options(*argv), recorder, None) is None


@pytest.mark.parametrize(
    ("argv", "server"),
    [
        (("--upload-url", f"{SERVER}/upload"), SERVER),
        (("--upload-url", f"{SERVER}/upload", "--heartbeat-url", "http://127.0.0.1:9"), "http://127.0.0.1:9"),
        (("--heartbeat-url", SERVER), SERVER),  # a recording-only robot still shows on the dashboard
    ],
)
def test_heartbeat_goes_to_the_server_as_the_robot_with_its_key(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], server: str
) -> None:
    monkeypatch.setenv("UPLOAD_API_KEY", "rbk_robot-key")
    reporter = make_heartbeat(options(*argv, "--heartbeat", "2.5"), recorder, None)
    assert reporter is not None
    assert (reporter.url, reporter.robot_id) == (heartbeat_url(server, "rover-7"), "rover-7")
    assert (reporter.api_key, reporter.interval) == ("rbk_robot-key", 2.5)


def test_heartbeat_reports_the_recorder_and_the_upload_queue(recorder: Recorder) -> None:
    recorder.start()
    with_uploads = make_heartbeat(options("--upload-url", f"{SERVER}/upload"), recorder, Uploads())
    recording_only = make_heartbeat(options("--heartbeat-url", SERVER), recorder, None)
    assert with_uploads is not None
    assert recording_only is not None

    body = with_uploads.payload()
    assert body["recorder"]["state"] == "recording"
    assert body["recorder"]["robot_id"] == "rover-7"
    assert body["uploads"] == {"queue_length": 2, "uploads": []}
    assert "uploads" not in recording_only.payload()


def test_commands_drive_the_recorder_and_answer_with_its_new_state(recorder: Recorder) -> None:
    run = recorder_commands(recorder)
    assert run(RobotAction.START, {}) == "recording"
    assert run(RobotAction.PAUSE, {}) == "paused"
    with pytest.raises(RecorderError):
        run(RobotAction.PAUSE, {})
    assert run(RobotAction.RESUME, {}) == "recording"
    assert run(RobotAction.STOP, {}) == "stopped"


@pytest.mark.gunicorn
def test_operator_pause_reaches_the_recorder_and_is_acknowledged(
    recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = GunicornServer(tmp_path / "server", workers=1, auth=True)
    monkeypatch.setenv("UPLOAD_API_KEY", key_store_for(server.upload_dir).create("rover-7").token)
    operator = server.headers(server.admin_key)
    recorder.start()
    with server:
        reporter = make_heartbeat(options("--upload-url", server.upload_url), recorder, None)
        assert reporter is not None
        reporter.beat()
        queued = requests.post(
            f"{server.url}/dashboard/api/robots/rover-7/commands",
            json={"action": "pause"},
            headers=operator,
            timeout=10,
        )
        assert queued.status_code == 202, queued.text

        assert reporter.beat() == 1
        assert recorder.status().state == "paused"
        reporter.beat()
        state = requests.get(f"{server.url}/dashboard/api/state", headers=operator, timeout=10).json()

    (robot,) = state["fleet"]
    (command,) = state["commands"]
    assert (robot["robot_id"], robot["recording_state"]) == ("rover-7", "paused")
    assert (command["id"], command["state"], command["message"]) == (queued.json()["command"]["id"], "done", "paused")
