"""The RobotStore contract on both engines: SQLite (embedded) and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import ServerConfig
from core.protocol import CommandState, RobotAction
from core.server.robots import MAX_ACK_MESSAGE, Command, Rejection, RobotStore, SQLRobotStore, open_robot_store

TTL = 60.0

OpenStore = Callable[[], RobotStore]


@pytest.fixture
def open_store(state_store_uri: str, tmp_path: Path) -> Iterator[OpenStore]:
    """Each call is another handle on the same data: another gunicorn worker, or another app server."""
    config = ServerConfig(upload_dir=tmp_path, state_store_uri=state_store_uri)
    stores: list[RobotStore] = []

    def open_() -> RobotStore:
        stores.append(open_robot_store(config))
        return stores[-1]

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> RobotStore:
    return open_store()


def command(robot_id: str, action: RobotAction, created_at: float) -> Command:
    return Command(robot_id, action, {"reason": "test"}, issued_by="operator", created_at=created_at)


def test_status_is_replaced_by_each_heartbeat_and_first_seen_kept(store: RobotStore) -> None:
    store.put_status("r1", {"recorder": {"state": "recording"}}, 10.0)
    store.put_status("r1", {"recorder": {"state": "paused"}, "uploads": []}, 15.0)
    (robot,) = store.robots()
    assert robot.robot_id == "r1"
    assert robot.status == {"recorder": {"state": "paused"}, "uploads": []}
    assert (robot.first_seen, robot.last_seen) == (10.0, 15.0)


def test_robots_are_listed_by_id(store: RobotStore) -> None:
    for robot_id in ("rover-b", "Rover-Z", "rover-a", "rover-ä"):
        store.put_status(robot_id, {}, 1.0)
    assert [r.robot_id for r in store.robots()] == ["Rover-Z", "rover-a", "rover-b", "rover-ä"]


def test_open_commands_are_delivered_oldest_first_until_acknowledged(store: RobotStore) -> None:
    later, earlier = command("r1", RobotAction.SPLIT, 11.0), command("r1", RobotAction.PAUSE, 10.0)
    store.enqueue(later)
    store.enqueue(earlier)
    first = store.take_open("r1", now=12.0, ttl=TTL)
    again = store.take_open("r1", now=13.0, ttl=TTL)
    assert [c.id for c in first] == [earlier.id, later.id] == [c.id for c in again]
    assert {c.state for c in again} == {CommandState.DELIVERED}
    assert (first[0].action, first[0].args, first[0].issued_by) == (RobotAction.PAUSE, {"reason": "test"}, "operator")

    store.acknowledge("r1", [{"id": earlier.id, "ok": True, "message": "paused"}], now=14.0)
    assert [c.id for c in store.take_open("r1", now=15.0, ttl=TTL)] == [later.id]
    done = {c.id: c for c in store.recent_commands()}[earlier.id]
    assert (done.state, done.message, done.updated_at) == (CommandState.DONE, "paused", 14.0)


def test_failed_acknowledgement_keeps_a_bounded_reason(store: RobotStore) -> None:
    queued = command("r1", RobotAction.RESUME, 10.0)
    store.enqueue(queued)
    store.take_open("r1", now=11.0, ttl=TTL)
    store.acknowledge("r1", [{"id": queued.id, "ok": False, "message": "x" * 10_000}], now=12.0)
    (stored,) = store.recent_commands()
    assert stored.state == CommandState.FAILED
    assert stored.message == "x" * MAX_ACK_MESSAGE
    assert store.take_open("r1", now=13.0, ttl=TTL) == []


def test_commands_older_than_the_ttl_expire_and_ignore_late_acks(store: RobotStore) -> None:
    old, fresh = command("r1", RobotAction.START, 10.0), command("r1", RobotAction.STOP, 70.0)
    store.enqueue(old)
    store.enqueue(fresh)
    assert [c.id for c in store.take_open("r1", now=75.0, ttl=TTL)] == [fresh.id]
    store.acknowledge("r1", [{"id": old.id, "ok": True}], now=76.0)
    expired = {c.id: c for c in store.recent_commands()}[old.id]
    assert (expired.state, expired.message, expired.updated_at) == (
        CommandState.EXPIRED,
        "not acknowledged in time",
        75.0,
    )


def test_robots_neither_receive_nor_acknowledge_each_others_commands(store: RobotStore) -> None:
    theirs = command("r1", RobotAction.STOP, 10.0)
    store.enqueue(theirs)
    assert store.take_open("r2", now=11.0, ttl=TTL) == []
    store.acknowledge("r2", [{"id": theirs.id, "ok": True}], now=12.0)
    assert [c.id for c in store.take_open("r1", now=13.0, ttl=TTL)] == [theirs.id]


def test_acknowledging_twice_keeps_the_first_answer(store: RobotStore) -> None:
    queued = command("r1", RobotAction.SPLIT, 10.0)
    store.enqueue(queued)
    store.acknowledge("r1", [{"id": queued.id, "ok": True, "message": "split"}], now=11.0)
    store.acknowledge("r1", [{"id": queued.id, "ok": False, "message": "late duplicate"}], now=12.0)
    (stored,) = store.recent_commands()
    assert (stored.state, stored.message) == (CommandState.DONE, "split")


def test_recent_commands_are_newest_first_and_limited(store: RobotStore) -> None:
    queued = [command(f"r{n % 3}", RobotAction.PAUSE, 100.0 + n) for n in range(8)]
    for item in queued:
        store.enqueue(item)
    assert [c.id for c in store.recent_commands(limit=5)] == [c.id for c in reversed(queued)][:5]


def test_every_handle_sees_the_same_robots_and_queue(open_store: OpenStore) -> None:
    writer, reader = open_store(), open_store()
    writer.put_status("r", {"recorder": {"state": "idle"}}, 10.0)
    queued = command("r", RobotAction.SPLIT, 10.0)
    writer.enqueue(queued)
    assert [r.status for r in reader.robots()] == [{"recorder": {"state": "idle"}}]
    assert [c.id for c in reader.take_open("r", now=11.0, ttl=TTL)] == [queued.id]
    writer.acknowledge("r", [{"id": queued.id, "ok": True}], now=12.0)
    assert reader.take_open("r", now=13.0, ttl=TTL) == []


def test_state_store_uri_selects_the_engine_and_sqlite_stays_the_default(state_store_uri: str, tmp_path: Path) -> None:
    store = open_robot_store(ServerConfig(upload_dir=tmp_path / "root", state_store_uri=state_store_uri))
    assert isinstance(store, SQLRobotStore)
    assert store.engine.dialect.name == ("postgresql" if state_store_uri else "sqlite")
    assert (tmp_path / "root").exists() == (not state_store_uri)
    store.close()


def test_a_rejected_heartbeat_is_remembered_with_its_reason_and_replaced_by_the_next(open_store: OpenStore) -> None:
    store, other_worker = open_store(), open_store()
    store.put_status("robot-1", {"recorder": {}}, now=100.0)
    store.put_status("robot-2", {}, now=100.0)

    store.record_rejection("robot-1", Rejection(150.0, 413, "payload_too_large: too big"))
    store.record_rejection("robot-1", Rejection(160.0, 400, "invalid_json: not JSON"))

    robots = {r.robot_id: r for r in other_worker.robots()}
    assert robots["robot-1"].rejection == Rejection(160.0, 400, "invalid_json: not JSON")
    assert robots["robot-1"].last_seen == 100.0  # a refused heartbeat is not a sign of life
    assert robots["robot-2"].rejection is None


def test_rejections_of_robots_never_seen_add_nothing(store: RobotStore) -> None:
    store.record_rejection("stranger", Rejection(150.0, 401, "unauthorized: no key"))

    assert store.robots() == []
