"""The state database stays bounded: the sweep prunes receipts of finished uploads, old commands, silent robots."""

from __future__ import annotations

import os
from collections.abc import Callable

from flask import Flask
from sqlalchemy import func, select

from core.protocol import CommandState, RobotAction
from core.server import db
from core.server.robots import Command, robot_store
from tests.server.conftest import CHUNK, FakeClock
from tests.server.uploads import Upload

RETENTION = 7 * 86400.0


def rows(app: Flask, table: object) -> int:
    with db.read(app.extensions[db.EXTENSION]) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def upload_files(app: Flask, count: int) -> None:
    for _ in range(count):
        upload = Upload(app.test_client(), os.urandom(4 * CHUNK), CHUNK)
        upload.init()
        upload.send_all()
        upload.finalize()
        assert app.extensions["job_runner"].run_once() is True
        assert upload.status()["state"] == "complete"


def test_chunk_receipts_do_not_grow_with_the_number_of_uploads(
    make_app: Callable[..., Flask], state_store_uri: str
) -> None:
    app = make_app(state_store_uri=state_store_uri)
    service = app.extensions["upload_service"]
    unfinished = Upload(app.test_client(), os.urandom(4 * CHUNK), CHUNK)
    unfinished.init()
    unfinished.send(0)

    upload_files(app, 10)
    assert rows(app, db.chunks) == 41  # 10 finished uploads x 4 receipts + the unfinished one's
    service.sweep()
    after_ten = rows(app, db.chunks)
    upload_files(app, 10)
    service.sweep()

    assert after_ten == rows(app, db.chunks) == 1  # only the receipt a resume still needs
    assert unfinished.status()["received"] == [0]


def test_the_sweep_prunes_answered_commands_and_silent_robots_after_the_retention(
    make_app: Callable[..., Flask], state_store_uri: str, clock: FakeClock
) -> None:
    app = make_app(state_store_uri=state_store_uri, state_retention=RETENTION)
    robots = robot_store(app)
    old, recent = clock() - RETENTION - 1, clock() - 60
    robots.put_status("retired", {}, old)
    robots.put_status("active", {}, recent)
    done_long_ago = Command("active", RobotAction.SPLIT, created_at=old, updated_at=old, state=CommandState.DONE)
    waiting = Command("active", RobotAction.PAUSE, created_at=old, updated_at=old)
    done_lately = Command("active", RobotAction.RESUME, created_at=recent, updated_at=recent, state=CommandState.DONE)
    for command in (done_long_ago, waiting, done_lately):
        robots.enqueue(command)

    app.extensions["upload_service"].sweep()

    assert [r.robot_id for r in robots.robots()] == ["active"]
    assert sorted(c.id for c in robots.recent_commands()) == sorted([waiting.id, done_lately.id])
