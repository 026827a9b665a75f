"""Robot-side heartbeat reporter: sends status snapshots to the server and runs the operator's commands.

A daemon thread POSTs ``{"recorder": recorder.status(), "uploads": manager.status(), …}``
to ``HEARTBEAT_PATH`` every ``interval`` seconds with the robot's key. Commands in the
reply go to a handler callback; their outcome is acknowledged in the next heartbeat,
which is sent at once so the operator sees the effect within a round trip. Failures
back off exponentially (with jitter) up to ``max_backoff``; the recorder and uploads
never wait for the server. No Flask import: this runs on the robot.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from core.client.session import robot_session
from core.config import ClientConfig
from core.protocol import (
    AUTH_SCHEME,
    HEADER_AUTHORIZATION,
    CommandAck,
    CommandDoc,
    RobotAction,
    heartbeat_url,
)

log = logging.getLogger(__name__)

CommandHandler = Callable[[RobotAction, Mapping[str, Any]], object]
StatusSource = Callable[[], Any]
# Remembered command ids: a command redelivered before its ack arrived must not run twice.
_SEEN_IDS = 256


class HeartbeatError(Exception):
    """A heartbeat did not reach the server or was refused."""


class HeartbeatReporter:
    """Reports ``sources`` to the server and dispatches the commands it answers with.

    ``sources`` maps a payload field (``"recorder"``, ``"uploads"``) to a callable
    returning a JSON-serialisable snapshot. ``handler(action, args)`` runs a command;
    an exception marks the command failed with its message.
    """

    def __init__(
        self,
        upload_url: str,
        robot_id: str | None = None,
        *,
        sources: Mapping[str, StatusSource],
        handler: CommandHandler | None = None,
        api_key: str | None = None,
        interval: float = 5.0,
        max_backoff: float = 60.0,
        timeout: tuple[float, float] = (5.0, 10.0),
        session: requests.Session | None = None,
        verify: bool | str | None = None,
        wait: Callable[[float], bool] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.robot_id = robot_id or os.environ.get("ROBOT_ID") or socket.gethostname()
        self.url = heartbeat_url(upload_url, self.robot_id)
        self.sources = dict(sources)
        self.handler = handler
        self.api_key = api_key if api_key is not None else os.environ.get("UPLOAD_API_KEY")
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        # Like the uploader: UPLOAD_CA_BUNDLE beats REQUESTS_CA_BUNDLE, passed per request so that
        # it does with a caller's own session too.
        if verify is None:
            ca_bundle = ClientConfig.from_env().ca_bundle
            verify = str(ca_bundle) if ca_bundle else True
        self.session = session or robot_session(self.url, verify)
        self.verify: bool | str = verify if session else self.session.verify
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._jitter = jitter
        self._thread: threading.Thread | None = None
        self._acks: list[CommandAck] = []
        self._seen: collections.deque[str] = collections.deque(maxlen=_SEEN_IDS)
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> HeartbeatReporter:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=f"heartbeat-{self.robot_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Beat until stopped; an immediate extra beat follows each batch of commands."""
        while not self._stop.is_set():
            try:
                ran_commands = self.beat()
            except HeartbeatError:
                delay = self.next_delay()
            else:
                delay = 0.0 if ran_commands else self.interval
            if delay and self._wait(delay):
                return

    def next_delay(self) -> float:
        """Exponential backoff with full jitter, capped; the base is the normal interval."""
        ceiling = min(self.max_backoff, self.interval * 2 ** min(self.failures, 16))
        return max(self.interval, ceiling * (0.5 + 0.5 * self._jitter()))

    # --- one heartbeat ---------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"sent_at": time.time(), "acks": list(self._acks)}
        for name, source in self.sources.items():
            try:
                body[name] = source()
            except Exception as err:  # a broken source must not silence the others
                body[name] = {"error": f"{type(err).__name__}: {err}"}
        body.setdefault("host", {"hostname": socket.gethostname(), "pid": os.getpid()})
        return body

    def beat(self) -> int:
        """Send one heartbeat, run the commands in its reply; returns how many ran."""
        body = self.payload()
        sent_acks = len(body["acks"])
        headers = {HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {self.api_key}"} if self.api_key else {}
        try:
            response = self.session.post(self.url, json=body, headers=headers, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as err:
            self._failed(f"{type(err).__name__}: {err}")
            msg = f"heartbeat to {self.url} failed: {err}"
            raise HeartbeatError(msg) from err
        if response.status_code != 200:
            self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
            msg = f"heartbeat to {self.url} refused: HTTP {response.status_code}"
            raise HeartbeatError(msg)
        # The server has recorded these acks; later ones were added while the request ran.
        del self._acks[:sent_acks]
        if self.failures:
            log.info("heartbeat robot=%s reconnected after %d failures", self.robot_id, self.failures)
        self.failures, self.last_error, self.last_success = 0, None, time.time()
        try:
            commands = response.json().get("commands", [])
        except ValueError:
            commands = []
        return sum(self._dispatch(command) for command in commands)

    def _failed(self, reason: str) -> None:
        if not self.failures:
            log.warning("heartbeat robot=%s failing: %s", self.robot_id, reason)
        self.failures += 1
        self.last_error = reason

    def _dispatch(self, command: CommandDoc) -> bool:
        command_id = str(command.get("id", ""))
        if not command_id or command_id in self._seen:
            return False
        self._seen.append(command_id)
        ack: CommandAck = {"id": command_id, "ok": True, "message": ""}
        try:
            action = RobotAction(command.get("action"))
            if self.handler is None:
                msg = "this robot accepts no commands"
                raise RuntimeError(msg)
            result = self.handler(action, command.get("args") or {})
            ack["message"] = "" if result is None else str(result)
        except Exception as err:  # the operator sees the failure; the reporter keeps running
            ack = {"id": command_id, "ok": False, "message": f"{type(err).__name__}: {err}"}
        log.info("command robot=%s id=%s action=%s ok=%s", self.robot_id, command_id, command.get("action"), ack["ok"])
        self._acks.append(ack)
        return True
