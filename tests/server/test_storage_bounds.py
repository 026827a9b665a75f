"""Bounded storage: admins delete stored uploads (API and CLI, audited), optional age retention, a free-disk floor."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from flask import Flask
from flask.testing import FlaskClient

import core.server.service as service_module
from core.protocol import GiB
from core.server.jobs import JobRunner
from tests.server.conftest import CHUNK, FakeClock
from tests.server.uploads import Upload, assert_error, identity_header

ADMIN = identity_header("ops", admin=True)
ROBOT = identity_header("robot-1")


def stored(client: FlaskClient, jobs: JobRunner, data: bytes, **fields: Any) -> Upload:
    """An upload of ``data`` by robot-1, finalized and complete."""
    upload = Upload(client, data, CHUNK, headers=ROBOT, **fields)
    assert upload.init().status_code in (200, 201)
    upload.send_all()
    assert upload.finalize().status_code == 202
    while jobs.run_once():
        pass
    assert upload.status()["state"] == "complete"
    return upload


def store_files(upload_dir: Path) -> list[Path]:
    return sorted(p for p in (upload_dir / "store").rglob("*") if p.is_file())


def test_admin_deletes_a_stored_upload_and_its_file(
    client: FlaskClient, jobs: JobRunner, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upload = stored(client, jobs, os.urandom(3 * CHUNK))
    assert store_files(upload_dir)

    with caplog.at_level(logging.INFO, logger="upload_server"):
        reply = client.delete(f"/uploads/{upload.upload_id}/file", headers=ADMIN)

    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["state"] == "aborted"
    assert body["error"]["code"] == "upload_deleted"
    assert body["bytes_freed"] > 0
    assert body["shared_with"] is None
    assert store_files(upload_dir) == []
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Deleted upload")]
    assert len(audit) == 1
    assert upload.upload_id in audit[0]
    assert "by ops" in audit[0]
    assert upload.status()["error"]["code"] == "upload_deleted"  # the robot can still see what happened
    assert_error(upload.download(), 409, "conflict")


def test_a_robot_key_may_not_delete(client: FlaskClient, jobs: JobRunner, upload_dir: Path) -> None:
    upload = stored(client, jobs, os.urandom(CHUNK))

    assert_error(client.delete(f"/uploads/{upload.upload_id}/file", headers=ROBOT), 403, "forbidden")
    assert upload.status()["state"] == "complete"
    assert store_files(upload_dir)


@pytest.mark.parametrize("upload_id", ["0" * 32, "not-an-id"])
def test_deleting_an_unknown_upload_is_404(client: FlaskClient, upload_id: str) -> None:
    assert_error(client.delete(f"/uploads/{upload_id}/file", headers=ADMIN), 404, "not_found")


def test_an_incomplete_upload_cannot_be_deleted(new_upload: Callable[..., Upload], client: FlaskClient) -> None:
    upload = new_upload(os.urandom(2 * CHUNK))
    upload.init()

    assert_error(client.delete(f"/uploads/{upload.upload_id}/file", headers=ADMIN), 409, "conflict")


def test_a_file_shared_by_deduplicated_uploads_stays_until_the_last_is_deleted(
    client: FlaskClient, jobs: JobRunner, upload_dir: Path
) -> None:
    data = os.urandom(2 * CHUNK)
    first = stored(client, jobs, data)
    second = Upload(client, data, CHUNK, headers=ROBOT, filename="copy.bag")
    assert second.init().get_json()["deduplicated"] is True

    kept = client.delete(f"/uploads/{first.upload_id}/file", headers=ADMIN).get_json()
    assert kept["bytes_freed"] == 0
    assert kept["shared_with"] == second.upload_id
    assert second.download().data == data

    gone = client.delete(f"/uploads/{second.upload_id}/file", headers=ADMIN).get_json()
    assert gone["bytes_freed"] > 0
    assert store_files(upload_dir) == []


def test_cli_deletes_a_stored_upload(app: Flask, client: FlaskClient, jobs: JobRunner, upload_dir: Path) -> None:
    upload = stored(client, jobs, os.urandom(CHUNK))

    result = app.test_cli_runner().invoke(args=["uploads", "delete", upload.upload_id, "--yes"])
    again = app.test_cli_runner().invoke(args=["uploads", "delete", upload.upload_id, "--yes"])

    assert result.exit_code == 0, result.output
    assert f"deleted upload {upload.upload_id}" in result.output
    assert store_files(upload_dir) == []
    assert again.exit_code != 0
    assert "is aborted" in again.output


class Aged(NamedTuple):
    old: Upload
    new: Upload


@pytest.fixture
def aged(make_app: Callable[..., Flask], clock: FakeClock) -> tuple[Flask, Aged]:
    app = make_app(retention_days=7.0)
    client, jobs = app.test_client(), app.extensions["job_runner"]
    old = stored(client, jobs, os.urandom(CHUNK), filename="old.bag")
    clock.advance(6 * 86400)
    new = stored(client, jobs, os.urandom(CHUNK), filename="new.bag")
    return app, Aged(old, new)


def test_retention_off_by_default_keeps_everything(
    client: FlaskClient, jobs: JobRunner, service: Any, clock: FakeClock
) -> None:
    upload = stored(client, jobs, os.urandom(CHUNK))
    clock.advance(10 * 365 * 86400)

    service.sweep()

    assert upload.status()["state"] == "complete"


def test_the_sweep_deletes_stored_files_older_than_retention_days(aged: tuple[Flask, Aged], clock: FakeClock) -> None:
    app, uploads = aged
    clock.advance(2 * 86400)  # old: 8 days, new: 2 days

    app.extensions["upload_service"].sweep()

    assert uploads.old.status()["error"]["code"] == "upload_deleted"
    assert "retention" in uploads.old.status()["error"]["message"]
    assert uploads.new.status()["state"] == "complete"
    assert len(store_files(app.extensions["server_config"].upload_dir)) == 2  # the new blob and its sidecar


def test_retention_works_through_many_pages(
    make_app: Callable[..., Flask], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RETENTION_BATCH", 2)  # a small page forces several rounds
    app = make_app(retention_days=1.0)
    client, jobs, service = app.test_client(), app.extensions["job_runner"], app.extensions["upload_service"]
    for n in range(5):
        stored(client, jobs, os.urandom(64), filename=f"b{n}.bag")
    clock.advance(2 * 86400)
    fresh = stored(client, jobs, os.urandom(64), filename="fresh.bag")

    assert service.apply_retention() == 5
    assert fresh.status()["state"] == "complete"


class FakeUsage(NamedTuple):
    total: int
    used: int
    free: int


def test_init_is_refused_with_507_below_the_free_disk_floor(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_app(min_free_disk=1 * GiB).test_client()
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: FakeUsage(10 * GiB, 9 * GiB, GiB + 100))
    small = Upload(client, os.urandom(100), CHUNK)
    big = Upload(client, os.urandom(101), CHUNK)

    assert small.init().status_code == 201  # leaves exactly the floor
    error = assert_error(big.init(), 507, "insufficient_storage")

    assert "MIN_FREE_DISK" in error["message"]
    assert error["free_bytes"] == GiB + 100
    assert error["needed_bytes"] == 101
    assert small.send(0).status_code == 201  # uploads under way keep going


def test_the_floor_is_off_at_zero(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_app(min_free_disk=0).test_client()
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: FakeUsage(10 * GiB, 10 * GiB, 0))

    assert Upload(client, os.urandom(100), CHUNK).init().status_code == 201
