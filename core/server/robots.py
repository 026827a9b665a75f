"""Robot heartbeats: the latest status of every robot and the operator-command queue.

Robots POST their recorder and upload-queue snapshots to ``HEARTBEAT_PATH``; the
reply carries operator commands (start/stop/pause/resume/split) that the robot
acknowledges in its next heartbeat. Delivery is at-least-once: a command stays
in every reply until acknowledged or expired, and the robot de-duplicates by id.
The store interface is deliberately small; it lives in the state database, so
with ``STATE_STORE_URI=postgresql://…`` several app servers behind one nginx share
every robot's status and commands.
"""

from __future__ import annotations

import abc
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy import Engine, delete, insert, select, update

from core.config import ServerConfig
from core.protocol import HEARTBEAT_PATH, CommandAck, CommandDoc, CommandState, RobotAction
from core.server import db
from core.server.db import commands, upsert
from core.server.db import robots as robots_table
from core.server.errors import Forbidden, InvalidField, InvalidJson, PayloadTooLarge
from core.server.identity import current_identity

log = logging.getLogger(__name__)

EXTENSION = "robot_store"
CONFIG_EXTENSION = "robots_config"
MAX_HEARTBEAT_BYTES = 512 * 1024
MAX_ROBOT_ID_LENGTH = 128
# Any printable name a key may carry; the dashboard escapes it. Control characters never.
_ROBOT_ID = re.compile(rf"^[^\x00-\x1f\x7f]{{1,{MAX_ROBOT_ID_LENGTH}}}$")
_OPEN_STATES = (CommandState.PENDING.value, CommandState.DELIVERED.value)
_EXPIRED_MESSAGE = "not acknowledged in time"
MAX_ACK_MESSAGE = 500
MAX_REJECTION_REASON = 300


@dataclass(frozen=True)
class Rejection:
    """The last heartbeat the server refused for a robot: when, with which status, and why."""

    at: float
    status: int
    reason: str


@dataclass(frozen=True)
class RobotStatus:
    """The latest heartbeat of one robot, as stored."""

    robot_id: str
    status: dict[str, Any]
    last_seen: float
    first_seen: float
    rejection: Rejection | None = None


@dataclass
class Command:
    """An operator action waiting for, or answered by, a robot."""

    robot_id: str
    action: RobotAction
    args: dict[str, Any] = field(default_factory=dict)
    issued_by: str = ""
    created_at: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: CommandState = CommandState.PENDING
    message: str = ""
    updated_at: float = 0.0

    def doc(self) -> CommandDoc:
        return {"id": self.id, "action": self.action.value, "args": self.args, "created_at": self.created_at}

    def as_json(self) -> dict[str, Any]:
        return {
            **self.doc(),
            "robot_id": self.robot_id,
            "issued_by": self.issued_by,
            "state": self.state.value,
            "message": self.message,
            "updated_at": self.updated_at,
        }


class RobotStore(abc.ABC):
    """Latest status per robot plus the command queue; shared by every worker and host."""

    @abc.abstractmethod
    def put_status(self, robot_id: str, status: dict[str, Any], now: float) -> None:
        """Replace the robot's latest status and set its last-seen time."""

    @abc.abstractmethod
    def robots(self) -> list[RobotStatus]:
        """Every robot ever seen, ordered by id, each with its last heartbeat rejection (if any)."""

    @abc.abstractmethod
    def record_rejection(self, robot_id: str, rejection: Rejection) -> None:
        """Remember the robot's latest refused heartbeat; ignored for robots never seen (strangers add no rows)."""

    @abc.abstractmethod
    def enqueue(self, command: Command) -> None:
        """Queue a command for its robot."""

    @abc.abstractmethod
    def take_open(self, robot_id: str, now: float, ttl: float) -> list[Command]:
        """Unanswered commands younger than ``ttl`` (marked delivered); older ones expire."""

    @abc.abstractmethod
    def acknowledge(self, robot_id: str, acks: Sequence[CommandAck], now: float) -> None:
        """Record the robot's answers; acks for other robots' commands are ignored."""

    @abc.abstractmethod
    def recent_commands(self, limit: int = 50) -> list[Command]:
        """Newest commands first, for the dashboard."""

    @abc.abstractmethod
    def prune(self, before: float) -> int:
        """Delete answered or expired commands last changed before ``before``, and robots last seen before it."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores have nothing to release
        """Release connections."""


class SQLRobotStore(RobotStore):
    """Robots and commands in the state database, shared by every worker and host."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put_status(self, robot_id: str, status: dict[str, Any], now: float) -> None:
        with db.write(self.engine) as conn:
            stmt = upsert(conn, robots_table).values(
                robot_id=robot_id, status=json.dumps(status), last_seen=now, first_seen=now
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["robot_id"],
                    set_={"status": stmt.excluded.status, "last_seen": stmt.excluded.last_seen},
                )
            )

    def robots(self) -> list[RobotStatus]:
        c = robots_table.c
        with db.read(self.engine) as conn:
            rows = conn.execute(
                select(
                    c.robot_id, c.status, c.last_seen, c.first_seen, c.rejected_at, c.rejected_status, c.rejected_reason
                ).order_by(c.robot_id)
            ).all()
        return [
            RobotStatus(r[0], json.loads(r[1]), r[2], r[3], Rejection(r[4], r[5], r[6]) if r[4] is not None else None)
            for r in rows
        ]

    def record_rejection(self, robot_id: str, rejection: Rejection) -> None:
        # An UPDATE, not an upsert: only robots already seen are marked, so a stranger's requests create nothing.
        with db.write(self.engine) as conn:
            conn.execute(
                update(robots_table)
                .where(robots_table.c.robot_id == robot_id)
                .values(rejected_at=rejection.at, rejected_status=rejection.status, rejected_reason=rejection.reason)
            )

    def enqueue(self, command: Command) -> None:
        with db.write(self.engine) as conn:
            conn.execute(
                insert(commands).values(
                    id=command.id,
                    robot_id=command.robot_id,
                    action=command.action.value,
                    args=json.dumps(command.args),
                    issued_by=command.issued_by,
                    created_at=command.created_at,
                    state=command.state.value,
                    message=command.message,
                    updated_at=command.updated_at or command.created_at,
                )
            )

    def take_open(self, robot_id: str, now: float, ttl: float) -> list[Command]:
        c = commands.c
        with db.write(self.engine) as conn:
            conn.execute(
                update(commands)
                .where(c.robot_id == robot_id, c.state.in_(_OPEN_STATES), c.created_at < now - ttl)
                .values(state=CommandState.EXPIRED.value, message=_EXPIRED_MESSAGE, updated_at=now)
            )
            conn.execute(
                update(commands)
                .where(c.robot_id == robot_id, c.state == CommandState.PENDING.value)
                .values(state=CommandState.DELIVERED.value, updated_at=now)
            )
            rows = conn.execute(
                select(commands)
                .where(c.robot_id == robot_id, c.state == CommandState.DELIVERED.value)
                .order_by(c.created_at)
            ).all()
        return [_command(row) for row in rows]

    def acknowledge(self, robot_id: str, acks: Sequence[CommandAck], now: float) -> None:
        if not acks:
            return
        c = commands.c
        with db.write(self.engine) as conn:
            for ack in acks:
                conn.execute(
                    update(commands)
                    .where(c.id == ack["id"], c.robot_id == robot_id, c.state.in_(_OPEN_STATES))
                    .values(state=_ack_state(ack).value, message=_ack_message(ack), updated_at=now)
                )

    def prune(self, before: float) -> int:
        c = commands.c
        with db.write(self.engine) as conn:
            answered = conn.execute(
                delete(commands).where(c.state.not_in(_OPEN_STATES), c.updated_at < before)
            ).rowcount
            silent = conn.execute(delete(robots_table).where(robots_table.c.last_seen < before)).rowcount
        return int(answered) + int(silent)

    def recent_commands(self, limit: int = 50) -> list[Command]:
        with db.read(self.engine) as conn:
            rows = conn.execute(select(commands).order_by(commands.c.created_at.desc()).limit(limit)).all()
        return [_command(row) for row in rows]

    def close(self) -> None:
        self.engine.dispose()


def _ack_state(ack: CommandAck) -> CommandState:
    return CommandState.DONE if ack.get("ok", True) else CommandState.FAILED


def _is_ack(ack: Any) -> bool:
    """A ``CommandAck``: a string ``id``; ``ok`` and ``message``, when present, a boolean and a string."""
    if not isinstance(ack, dict) or not isinstance(ack.get("id"), str):
        return False
    return isinstance(ack.get("ok", True), bool) and isinstance(ack.get("message", ""), str)


def _ack_message(ack: CommandAck) -> str:
    return str(ack.get("message", ""))[:MAX_ACK_MESSAGE]


def _command(row: Sequence[Any]) -> Command:
    return Command(
        id=row[0],
        robot_id=row[1],
        action=RobotAction(row[2]),
        args=json.loads(row[3]),
        issued_by=row[4],
        created_at=row[5],
        state=CommandState(row[6]),
        message=row[7],
        updated_at=row[8],
    )


def open_robot_store(config: ServerConfig, engine: Engine | None = None) -> RobotStore:
    """Robots in the state database of STATE_STORE_URI (``engine`` when the app has opened it already)."""
    return SQLRobotStore(engine or db.checked_engine(config))


# --- HTTP --------------------------------------------------------------------------------
def robot_store(app: Flask | None = None) -> RobotStore:
    store: RobotStore = (app or current_app).extensions[EXTENSION]
    return store


def validate_robot_id(robot_id: str) -> str:
    if not _ROBOT_ID.match(robot_id):
        msg = f"robot id must be 1-{MAX_ROBOT_ID_LENGTH} printable characters"
        raise InvalidField(msg)
    return robot_id


def _parse_heartbeat() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_HEARTBEAT_BYTES:
        msg = f"heartbeat larger than {MAX_HEARTBEAT_BYTES} bytes"
        raise PayloadTooLarge(msg)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidJson("heartbeat body must be a JSON object")
    for name in ("recorder", "uploads", "host"):
        if body.get(name) is not None and not isinstance(body[name], (dict, list)):
            raise InvalidField(f"{name} must be an object, a list or null")
    sent_at = body.get("sent_at")
    if sent_at is not None and (not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool)):
        raise InvalidField("sent_at must be a number (seconds since the epoch)")
    acks = body.get("acks", [])
    if not isinstance(acks, list) or not all(_is_ack(a) for a in acks):
        raise InvalidField("acks must be a list of objects with a string id, a boolean ok and a string message")
    return body


def heartbeat(robot_id: str) -> Any:
    """Store the robot's status, apply its acknowledgements, hand it its open commands."""
    validate_robot_id(robot_id)
    identity = current_identity()
    if not identity.admin and identity.name != robot_id:
        msg = f"identity {identity.name!r} may only report for itself"
        raise Forbidden(msg)
    body = _parse_heartbeat()
    config: ServerConfig = current_app.extensions[CONFIG_EXTENSION]
    acks: list[CommandAck] = body.pop("acks", [])
    now = time.time()
    store = robot_store()
    store.put_status(robot_id, body, now)
    store.acknowledge(robot_id, acks, now)
    commands = store.take_open(robot_id, now, config.command_ttl)
    if acks or commands:
        log.info("heartbeat robot=%s acks=%d commands=%d", robot_id, len(acks), len(commands))
    return jsonify(
        {
            "success": True,
            "commands": [c.doc() for c in commands],
            "interval": config.heartbeat_interval,
            "server_time": now,
        }
    )


def _rejection_reason(response: Response) -> str:
    body = response.get_json(silent=True) if response.is_json else None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"[:MAX_REJECTION_REASON]
    return f"HTTP {response.status_code}"


def record_rejected_heartbeat(response: Response) -> Response:
    """A heartbeat refused with a 4xx (too large, malformed, bad key, rate limited…) is remembered for its robot.

    Without it the dashboard shows a robot whose heartbeats are refused as a
    stale row going "offline"; with it, it shows "heartbeat rejected: <reason>".
    Runs for every layer's refusal (auth, body limits, rate limits, the view).
    """
    rule = request.url_rule
    # 4xx only: a 5xx (full disk, database down) is the server's trouble, and recording it would meet it again.
    if not 400 <= response.status_code < 500 or rule is None or rule.rule != HEARTBEAT_PATH:
        return response
    robot_id = str((request.view_args or {}).get("robot_id", ""))
    if not _ROBOT_ID.match(robot_id):
        return response
    rejection = Rejection(time.time(), response.status_code, _rejection_reason(response))
    try:
        robot_store().record_rejection(robot_id, rejection)
    except Exception as err:  # the store is down: the refusal itself must still reach the robot
        log.warning("could not record the rejected heartbeat of robot %s: %s: %s", robot_id, type(err).__name__, err)
        return response
    log.warning("heartbeat rejected robot=%s status=%d reason=%s", robot_id, rejection.status, rejection.reason)
    return response


def init_app(app: Flask, config: ServerConfig, store: RobotStore | None = None) -> None:
    """Open the robot store (``open_robot_store`` unless given) and mount the heartbeat route."""
    app.extensions[CONFIG_EXTENSION] = config
    app.extensions[EXTENSION] = store or open_robot_store(config, app.extensions.get(db.EXTENSION))
    # Rate limit: core.server.limits gives HEARTBEAT_PATH its own budget (HEARTBEAT_RATE_LIMIT).
    bp = Blueprint("robots", __name__)
    bp.add_url_rule(HEARTBEAT_PATH, view_func=heartbeat, methods=["POST"], endpoint="heartbeat")
    app.register_blueprint(bp)
    app.after_request(record_rejected_heartbeat)
