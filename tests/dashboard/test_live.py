"""Heartbeats, commands and the SSE stream against a real gunicorn (gthread workers)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from core.heartbeat import HeartbeatReporter
from core.protocol import RobotAction
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer

pytestmark = pytest.mark.gunicorn


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    upload_dir: Path = tmp_path_factory.mktemp("live") / "uploads"
    env = {"DASHBOARD_SSE_MAX_SECONDS": "3", "DASHBOARD_SSE_INTERVAL": "0.2", "HEARTBEAT_INTERVAL": "0.2"}
    with GunicornServer(upload_dir, workers=2, auth=True, env=env) as running:
        yield running


def state(server: GunicornServer) -> dict[str, Any]:
    reply = requests.get(server.url + "/dashboard/api/state", headers=server.headers(server.admin_key), timeout=5)
    reply.raise_for_status()
    return reply.json()


def test_operator_command_reaches_the_robot_and_its_ack_comes_back(server: GunicornServer) -> None:
    recorder = {"state": "recording"}
    handled: list[RobotAction] = []

    def handler(action: RobotAction, _args: Mapping[str, Any]) -> None:
        handled.append(action)
        recorder["state"] = "paused"

    reporter = HeartbeatReporter(
        server.upload_url, "robot-1", sources={"recorder": lambda: dict(recorder)}, handler=handler,
        api_key=server.robot_key, interval=0.2,
    ).start()  # fmt: skip
    try:
        wait_until(lambda: any(r["robot_id"] == "robot-1" for r in state(server)["fleet"]), 10, what="robot-1 online")
        reply = requests.post(
            server.url + "/dashboard/api/robots/robot-1/commands",
            json={"action": "pause"},
            headers=server.headers(server.admin_key),
            timeout=5,
        )
        assert reply.status_code == 202
        command_id = reply.json()["command"]["id"]

        def done() -> bool:
            document = state(server)
            commands = {c["id"]: c["state"] for c in document["commands"]}
            return commands.get(command_id) == "done" and document["fleet"][0]["recording_state"] == "paused"

        wait_until(done, 10, what="command acknowledged and recorder paused")
        assert handled == [RobotAction.PAUSE]
    finally:
        reporter.stop()


def test_robot_key_cannot_report_for_another_robot(server: GunicornServer) -> None:
    reply = requests.post(server.url + "/robots/robot-2/heartbeat", json={}, headers=server.headers(), timeout=5)
    assert reply.status_code == 403


def test_event_stream_is_live_bounded_and_unbuffered(server: GunicornServer) -> None:
    started = time.monotonic()
    events: list[str] = []
    with requests.get(
        server.url + "/dashboard/events", headers=server.headers(server.admin_key), stream=True, timeout=10
    ) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        assert reply.headers["X-Accel-Buffering"] == "no"
        first_event_at = None
        for line in reply.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                events.append(line[7:])
                first_event_at = first_event_at or time.monotonic()
    ended = time.monotonic()
    assert events[0] == "state"
    assert events[-1] == "bye"
    assert first_event_at is not None
    assert first_event_at - started < ended - started  # delivered while the stream was still open
    assert ended - started < 8  # DASHBOARD_SSE_MAX_SECONDS=3 bounds every stream


def test_event_stream_pushes_a_new_heartbeat_without_polling(server: GunicornServer) -> None:
    seen = threading.Event()

    def listen() -> None:
        with requests.get(
            server.url + "/dashboard/events", headers=server.headers(server.admin_key), stream=True, timeout=10
        ) as reply:
            for line in reply.iter_lines(decode_unicode=True):
                if line.startswith("data: ") and "sse-robot" in line:
                    assert json.loads(line[6:])["fleet"]
                    seen.set()
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    requests.post(
        server.url + "/robots/sse-robot/heartbeat", json={}, headers=server.headers(server.admin_key), timeout=5
    ).raise_for_status()
    assert seen.wait(5)
    listener.join(5)


def test_a_graceful_stop_ends_open_streams_with_bye_instead_of_waiting_for_them(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop/restart) must not wait DASHBOARD_SSE_MAX_SECONDS for every open dashboard."""
    env = {"DASHBOARD_SSE_MAX_SECONDS": "600", "DASHBOARD_SSE_INTERVAL": "0.2"}
    server = GunicornServer(tmp_path / "uploads", workers=1, auth=True, env=env).start()
    assert server.process is not None
    try:
        with requests.get(
            server.url + "/dashboard/events", headers=server.headers(server.admin_key), stream=True, timeout=30
        ) as reply:
            lines = reply.iter_lines(decode_unicode=True)
            assert next(line for line in lines if line.startswith("event: ")) == "event: state"
            server.process.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            events = [line for line in lines if line.startswith("event: ")]
        assert events[-1:] == ["event: bye"]
        wait_until(lambda: not server.process.alive(), 30, what="gunicorn to stop")  # type: ignore[union-attr]
        assert "Traceback" not in server.log()
    finally:
        server.stop()
