"""The robot-side reporter: payload, command dispatch, acknowledgements and backoff (real server in test_live)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import requests

from core.heartbeat import HeartbeatError, HeartbeatReporter
from core.protocol import RobotAction


class Reply:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code, self._body, self.text = status, body, str(body)

    def json(self) -> dict[str, Any]:
        return self._body


class ScriptedSession:
    """Answers each POST with the next scripted reply (or raises it) and records what was sent."""

    def __init__(self, *replies: Reply | Exception) -> None:
        self.replies = list(replies)
        self.sent: list[dict[str, Any]] = []
        self.headers: list[Mapping[str, str]] = []

    def post(self, url: str, *, json: dict[str, Any], headers: Mapping[str, str], **_: Any) -> Reply:
        self.sent.append(json)
        self.headers.append(headers)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def ok(*commands: dict[str, Any]) -> Reply:
    return Reply(200, {"success": True, "commands": list(commands), "interval": 5.0})


def reporter(session: ScriptedSession, handled: list[Any], **kwargs: Any) -> HeartbeatReporter:
    def handler(action: RobotAction, args: Mapping[str, Any]) -> None:
        if action is RobotAction.RESUME:
            msg = "cannot resume while stopped"
            raise RuntimeError(msg)
        handled.append(action)

    return HeartbeatReporter(
        "http://127.0.0.1:1/upload",
        "robot-1",
        sources={"recorder": lambda: {"state": "recording"}, "uploads": lambda: 1 / 0},
        handler=handler,
        api_key="k",
        session=session,  # type: ignore[arg-type]
        jitter=lambda: 1.0,
        **kwargs,
    )


def test_payload_carries_every_source_and_a_broken_one_reports_its_error() -> None:
    session = ScriptedSession(ok())
    reporter(session, []).beat()
    (body,) = session.sent
    assert body["recorder"] == {"state": "recording"}
    assert body["uploads"] == {"error": "ZeroDivisionError: division by zero"}
    assert session.headers[0]["Authorization"] == "Bearer k"


def test_commands_run_once_and_are_acknowledged_in_the_next_heartbeat() -> None:
    pause = {"id": "c1", "action": "pause", "args": {}, "created_at": 1.0}
    resume = {"id": "c2", "action": "resume", "args": {}, "created_at": 2.0}
    session = ScriptedSession(ok(pause, resume), ok(pause), ok())
    handled: list[Any] = []
    beats = reporter(session, handled)
    assert beats.beat() == 2
    assert beats.beat() == 0  # redelivered before the ack arrived: not run again
    beats.beat()
    assert handled == [RobotAction.PAUSE]
    assert session.sent[1]["acks"] == [
        {"id": "c1", "ok": True, "message": ""},
        {"id": "c2", "ok": False, "message": "RuntimeError: cannot resume while stopped"},
    ]
    assert session.sent[2]["acks"] == []


def test_acks_survive_a_failed_heartbeat() -> None:
    pause = {"id": "c1", "action": "pause", "args": {}, "created_at": 1.0}
    session = ScriptedSession(ok(pause), requests.ConnectionError("down"), ok())
    beats = reporter(session, [])
    beats.beat()
    with pytest.raises(HeartbeatError):
        beats.beat()
    beats.beat()
    assert [a["id"] for a in session.sent[2]["acks"]] == ["c1"]


def test_failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() -> None:
    session = ScriptedSession(*[Reply(503, {})] * 6, ok())
    beats = reporter(session, [], interval=2.0, max_backoff=20.0)
    delays = []
    for _ in range(6):
        with pytest.raises(HeartbeatError):
            beats.beat()
        delays.append(beats.next_delay())
    assert delays == [4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert beats.last_error is not None
    beats.beat()
    assert (beats.failures, beats.last_error) == (0, None)


def test_run_loop_beats_again_at_once_after_commands_and_stops_cleanly() -> None:
    pause = {"id": "c1", "action": "pause", "args": {}, "created_at": 1.0}
    session = ScriptedSession(ok(pause), ok(), ok())
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) >= 2  # "stopped" during the second wait

    beats = reporter(session, [], wait=wait, interval=3.0)
    beats.run()
    assert len(session.sent) == 3
    assert waits == [3.0, 3.0]
