"""Robot heartbeats: the latest status of every robot and the operator-command queue.

Robots POST their recorder and upload-queue snapshots to ``HEARTBEAT_PATH``; the
reply carries operator commands (start/stop/pause/resume/split) that the robot
acknowledges in its next heartbeat. Delivery is at-least-once: a command stays
in every reply until acknowledged or expired, and the robot de-duplicates by id.
The store interface is deliberately small: the embedded SQLite store serves one
host; the Redis store (``STATE_STORE_URI=redis://…``, like the upload state) lets
several app servers behind one nginx share every robot's status and commands.
"""

from __future__ import annotations

import abc
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from core.config import ServerConfig
from core.protocol import HEARTBEAT_PATH, CommandAck, CommandDoc, CommandState, RobotAction
from core.server.errors import Forbidden, InvalidField, InvalidJson, PayloadTooLarge
from core.server.identity import current_identity
from core.server.redis_store import PREFIX, connect
from core.sqlite import ThreadConnections, transaction

log = logging.getLogger(__name__)

EXTENSION = "robot_store"
ROBOTS_FILE = "robots.sqlite3"
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

    def close(self) -> None:  # noqa: B027 - optional hook, most stores have nothing to release
        """Release connections."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS robots (
    robot_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    last_seen REAL NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    issued_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS robot_rejections (
    robot_id TEXT PRIMARY KEY REFERENCES robots (robot_id),
    at REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_open ON commands (robot_id, state);
CREATE INDEX IF NOT EXISTS commands_created ON commands (created_at);
"""


class SQLiteRobotStore(RobotStore):
    """One WAL database file beside the upload state; a connection per thread and process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = ThreadConnections(path, timeout=10, synchronous="NORMAL", check_same_thread=False)
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._connection())

    def put_status(self, robot_id: str, status: dict[str, Any], now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO robots (robot_id, status, last_seen, first_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (robot_id) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen",
                (robot_id, json.dumps(status), now, now),
            )

    def robots(self) -> list[RobotStatus]:
        rows = self._connection().execute(
            "SELECT r.robot_id, r.status, r.last_seen, r.first_seen, j.at, j.status, j.reason"
            " FROM robots r LEFT JOIN robot_rejections j ON j.robot_id = r.robot_id ORDER BY r.robot_id"
        )
        return [
            RobotStatus(r[0], json.loads(r[1]), r[2], r[3], Rejection(r[4], r[5], r[6]) if r[4] is not None else None)
            for r in rows
        ]

    def record_rejection(self, robot_id: str, rejection: Rejection) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO robot_rejections (robot_id, at, status, reason)"
                " SELECT robot_id, ?, ?, ? FROM robots WHERE robot_id = ?"
                " ON CONFLICT (robot_id) DO UPDATE SET at = excluded.at, status = excluded.status,"
                " reason = excluded.reason",
                (rejection.at, rejection.status, rejection.reason, robot_id),
            )

    def enqueue(self, command: Command) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    command.id,
                    command.robot_id,
                    command.action.value,
                    json.dumps(command.args),
                    command.issued_by,
                    command.created_at,
                    command.state.value,
                    command.message,
                    command.updated_at or command.created_at,
                ),
            )

    def take_open(self, robot_id: str, now: float, ttl: float) -> list[Command]:
        with self._tx() as db:
            db.execute(
                "UPDATE commands SET state = ?, message = ?, updated_at = ? "
                "WHERE robot_id = ? AND state IN (?, ?) AND created_at < ?",
                (CommandState.EXPIRED.value, _EXPIRED_MESSAGE, now, robot_id, *_OPEN_STATES, now - ttl),
            )
            db.execute(
                "UPDATE commands SET state = ?, updated_at = ? WHERE robot_id = ? AND state = ?",
                (CommandState.DELIVERED.value, now, robot_id, CommandState.PENDING.value),
            )
            rows = db.execute(
                "SELECT * FROM commands WHERE robot_id = ? AND state = ? ORDER BY created_at",
                (robot_id, CommandState.DELIVERED.value),
            ).fetchall()
        return [_command(row) for row in rows]

    def acknowledge(self, robot_id: str, acks: Sequence[CommandAck], now: float) -> None:
        if not acks:
            return
        with self._tx() as db:
            for ack in acks:
                db.execute(
                    "UPDATE commands SET state = ?, message = ?, updated_at = ? "
                    "WHERE id = ? AND robot_id = ? AND state IN (?, ?)",
                    (_ack_state(ack).value, _ack_message(ack), now, ack["id"], robot_id, *_OPEN_STATES),
                )

    def recent_commands(self, limit: int = 50) -> list[Command]:
        rows = self._connection().execute("SELECT * FROM commands ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_command(row) for row in rows]

    def close(self) -> None:
        self._connections.close()


def _ack_state(ack: CommandAck) -> CommandState:
    return CommandState.DONE if ack.get("ok", True) else CommandState.FAILED


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


# --- Redis -------------------------------------------------------------------------------
# Each command is a hash; ``commands`` orders all of them by creation for the dashboard, and
# ``open:<robot>`` holds exactly the robot's pending and delivered ones, so a state change and
# leaving the open set happen together in one script and two app servers never disagree.

# KEYS: open set; ARGV: command key prefix, now, expire before, expired, pending, delivered, expiry message
_TAKE_OPEN = """
local taken = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. id
  local created = redis.call('HGET', key, 'created_at')
  if not created then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(created) < tonumber(ARGV[3]) then
    redis.call('HSET', key, 'state', ARGV[4], 'message', ARGV[7], 'updated_at', ARGV[2])
    redis.call('ZREM', KEYS[1], id)
  else
    if redis.call('HGET', key, 'state') == ARGV[5] then
      redis.call('HSET', key, 'state', ARGV[6], 'updated_at', ARGV[2])
    end
    table.insert(taken, redis.call('HGETALL', key))
  end
end
return taken
"""

# KEYS: open set; ARGV: command key prefix, now, then (id, state, message) per acknowledgement
_ACKNOWLEDGE = """
for i = 3, #ARGV, 3 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'state', ARGV[i + 1], 'message', ARGV[i + 2], 'updated_at', ARGV[2])
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 1
"""


_REJECTION_FIELDS = ("rejected_at", "rejected_status", "rejected_reason")


class RedisRobotStore(RobotStore):
    """Robot status and the command queue in Redis, shared by every app server of a scale-out.

    Commands are kept like the SQLite store keeps them (operators issue few); a
    robot's status is one hash it overwrites with each heartbeat.
    """

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = client
        self.p = f"{prefix}robots:"
        self._take_open = client.register_script(_TAKE_OPEN)
        self._acknowledge = client.register_script(_ACKNOWLEDGE)

    def _robot(self, robot_id: str) -> str:
        return f"{self.p}status:{robot_id}"

    def _open(self, robot_id: str) -> str:
        return f"{self.p}open:{robot_id}"

    @property
    def _command_prefix(self) -> str:
        return f"{self.p}command:"

    def put_status(self, robot_id: str, status: dict[str, Any], now: float) -> None:
        key = self._robot(robot_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"status": json.dumps(status), "last_seen": repr(now)})
        pipe.hsetnx(key, "first_seen", repr(now))
        # Equal scores: the set iterates in byte order of the ids, like SQLite's ORDER BY robot_id.
        pipe.zadd(f"{self.p}all", {robot_id: 0})
        pipe.execute()

    def robots(self) -> list[RobotStatus]:
        ids = [raw.decode() for raw in self.redis.zrange(f"{self.p}all", 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for robot_id in ids:
            pipe.hmget(self._robot(robot_id), "status", "last_seen", "first_seen", *_REJECTION_FIELDS)
        return [
            RobotStatus(
                robot_id,
                json.loads(status),
                float(last_seen),
                float(first_seen),
                Rejection(float(at), int(code), reason.decode()) if at is not None else None,
            )
            for robot_id, (status, last_seen, first_seen, at, code, reason) in zip(ids, pipe.execute(), strict=True)
            if status is not None
        ]

    def record_rejection(self, robot_id: str, rejection: Rejection) -> None:
        key = self._robot(robot_id)
        if self.redis.exists(key):  # only robots already seen: a stranger's requests create nothing
            values = (repr(rejection.at), str(rejection.status), rejection.reason)
            self.redis.hset(key, mapping=dict(zip(_REJECTION_FIELDS, values, strict=True)))

    def enqueue(self, command: Command) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self._command_prefix + command.id,
            mapping={
                "id": command.id,
                "robot_id": command.robot_id,
                "action": command.action.value,
                "args": json.dumps(command.args),
                "issued_by": command.issued_by,
                "created_at": repr(command.created_at),
                "state": command.state.value,
                "message": command.message,
                "updated_at": repr(command.updated_at or command.created_at),
            },
        )
        pipe.zadd(f"{self.p}commands", {command.id: command.created_at})
        if command.state.value in _OPEN_STATES:
            pipe.zadd(self._open(command.robot_id), {command.id: command.created_at})
        pipe.execute()

    def take_open(self, robot_id: str, now: float, ttl: float) -> list[Command]:
        taken = self._take_open(
            keys=[self._open(robot_id)],
            args=[
                self._command_prefix,
                repr(now),
                repr(now - ttl),
                CommandState.EXPIRED.value,
                CommandState.PENDING.value,
                CommandState.DELIVERED.value,
                _EXPIRED_MESSAGE,
            ],
        )
        return [_command_from_hash(dict(zip(flat[::2], flat[1::2], strict=True))) for flat in taken]

    def acknowledge(self, robot_id: str, acks: Sequence[CommandAck], now: float) -> None:
        if not acks:
            return
        answers = [item for ack in acks for item in (ack["id"], _ack_state(ack).value, _ack_message(ack))]
        self._acknowledge(keys=[self._open(robot_id)], args=[self._command_prefix, repr(now), *answers])

    def recent_commands(self, limit: int = 50) -> list[Command]:
        ids = self.redis.zrevrange(f"{self.p}commands", 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for command_id in ids:
            pipe.hgetall(self._command_prefix + command_id.decode())
        return [_command_from_hash(raw) for raw in pipe.execute() if raw]

    def close(self) -> None:
        self.redis.close()


def _command_from_hash(raw: dict[bytes, bytes]) -> Command:
    value = {key.decode(): data.decode() for key, data in raw.items()}
    return Command(
        id=value["id"],
        robot_id=value["robot_id"],
        action=RobotAction(value["action"]),
        args=json.loads(value["args"]),
        issued_by=value["issued_by"],
        created_at=float(value["created_at"]),
        state=CommandState(value["state"]),
        message=value["message"],
        updated_at=float(value["updated_at"]),
    )


def open_robot_store(config: ServerConfig) -> RobotStore:
    """Redis when STATE_STORE_URI is set (like the upload state), else SQLite beside it in UPLOAD_DIR."""
    if config.state_store_uri:
        return RedisRobotStore(connect(config.state_store_uri))
    return SQLiteRobotStore(config.upload_dir / ROBOTS_FILE)


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
    acks = body.get("acks", [])
    if not isinstance(acks, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), str) for a in acks):
        raise InvalidField("acks must be a list of objects with a string id")
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
    """A heartbeat answered 4xx/5xx (too large, malformed, bad key, rate limited…) is remembered for its robot.

    Without it the dashboard shows a robot whose heartbeats are refused as a
    stale row going "offline"; with it, it shows "heartbeat rejected: <reason>".
    Runs for every layer's refusal (auth, body limits, rate limits, the view).
    """
    rule = request.url_rule
    if response.status_code < 400 or rule is None or rule.rule != HEARTBEAT_PATH:
        return response
    robot_id = str((request.view_args or {}).get("robot_id", ""))
    if not _ROBOT_ID.match(robot_id):
        return response
    rejection = Rejection(time.time(), response.status_code, _rejection_reason(response))
    try:
        robot_store().record_rejection(robot_id, rejection)
    except Exception:  # the store is down: the refusal itself must still reach the robot
        log.exception("could not record the rejected heartbeat of robot %s", robot_id)
        return response
    log.warning("heartbeat rejected robot=%s status=%d reason=%s", robot_id, rejection.status, rejection.reason)
    return response


def init_app(app: Flask, config: ServerConfig, store: RobotStore | None = None) -> None:
    """Open the robot store (``open_robot_store`` unless given) and mount the heartbeat route."""
    app.extensions[CONFIG_EXTENSION] = config
    app.extensions[EXTENSION] = store or open_robot_store(config)
    # Rate limit: core.server.limits gives HEARTBEAT_PATH its own budget (HEARTBEAT_RATE_LIMIT).
    bp = Blueprint("robots", __name__)
    bp.add_url_rule(HEARTBEAT_PATH, view_func=heartbeat, methods=["POST"], endpoint="heartbeat")
    app.register_blueprint(bp)
    app.after_request(record_rejected_heartbeat)
