"""TTL sweep: idle incomplete uploads expire (410), in-server under a lease and from the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers.state import pass_database_time
from tests.server.conftest import CHUNK, FakeClock
from tests.server.uploads import Upload, assert_error

TTL = 3600.0


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app(upload_ttl=TTL, sweep_interval=60.0)  # type: ignore[no-any-return]


@pytest.fixture
def upload(new_upload: Any) -> Upload:
    upload: Upload = new_upload(os.urandom(3 * CHUNK))
    upload.init()
    upload.send(0)
    return upload


def part_file(upload_dir: Path, upload: Upload) -> Path:
    return upload_dir / "parts" / f"{upload.upload_id}.part"


def test_idle_upload_expires_and_requests_get_410(
    upload: Upload, service: Any, clock: FakeClock, upload_dir: Path
) -> None:
    clock.advance(TTL + 1)

    assert service.sweep() == 1

    assert not part_file(upload_dir, upload).exists()
    for response in (
        upload.client.get(f"/upload/{upload.upload_id}"),
        upload.send(1),
        upload.finalize(),
        upload.client.delete(f"/upload/{upload.upload_id}"),
    ):
        assert_error(response, 410, "upload_expired")


def test_reinit_after_expiry_starts_over(upload: Upload, service: Any, clock: FakeClock) -> None:
    old_id = upload.upload_id
    clock.advance(TTL + 1)
    service.sweep()

    assert upload.init().status_code == 201
    assert upload.upload_id != old_id
    assert upload.reply["received"] == []


def test_activity_keeps_an_upload_alive(upload: Upload, service: Any, clock: FakeClock) -> None:
    clock.advance(TTL - 10)
    upload.send(1)
    clock.advance(20)

    assert service.sweep() == 0
    assert upload.status()["state"] == "uploading"


def test_complete_uploads_are_never_swept(upload: Upload, service: Any, jobs: Any, clock: FakeClock) -> None:
    upload.send_all()
    upload.finalize()
    jobs.run_once()
    clock.advance(10 * TTL)

    assert service.sweep() == 0
    assert upload.download().data == upload.data


def test_in_server_sweep_runs_once_per_interval_across_processes(
    upload: Upload, make_app: Any, jobs: Any, clock: FakeClock
) -> None:
    other_process = make_app(upload_ttl=TTL, sweep_interval=60.0).extensions["job_runner"]
    clock.advance(TTL + 1)

    assert jobs.sweep_if_due() == 1
    assert other_process.sweep_if_due() is None  # the lease is held for one interval
    clock.advance(61)
    pass_database_time(jobs.state, 61)  # the lease runs on the database's clock
    assert other_process.sweep_if_due() == 0


def test_sweep_command_line(app: Flask, upload: Upload, clock: FakeClock) -> None:
    clock.advance(TTL + 1)

    result = app.test_cli_runner().invoke(args=["sweep"])

    assert result.exit_code == 0, result.output
    assert "expired 1 upload(s)" in result.output
    assert_error(upload.client.get(f"/upload/{upload.upload_id}"), 410, "upload_expired")


def age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def test_sweep_removes_the_part_file_a_crash_left_behind_a_finished_upload(
    upload: Upload, service: Any, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash between the complete transition and removing the part: the record is final, the part stays.
    monkeypatch.setattr(service.blobs, "remove_part", lambda _upload_id: None)
    upload.client.delete(f"/upload/{upload.upload_id}")
    assert part_file(upload_dir, upload).exists()
    monkeypatch.undo()

    service.sweep()

    assert not part_file(upload_dir, upload).exists()


def test_sweep_removes_a_part_file_without_a_record_once_it_is_older_than_the_ttl(
    service: Any, upload_dir: Path
) -> None:
    # init crashed between creating the part and inserting the record
    orphan, fresh = "f" * 32, "e" * 32
    service.blobs.create_part(orphan, 10)
    service.blobs.create_part(fresh, 10)  # an init in progress right now
    age(upload_dir / "parts" / f"{orphan}.part", TTL + 1)

    service.sweep()

    assert sorted(p.stem for p in (upload_dir / "parts").iterdir()) == [fresh]


def test_sweep_removes_staging_files_of_dead_attempts_only(service: Any, upload_dir: Path) -> None:
    dead, live = service.blobs.staging_path("d" * 32, 1), service.blobs.staging_path("c" * 32, 2)
    dead.write_bytes(b"half a compressed file")
    live.write_bytes(b"being written")
    age(dead, 3600)

    service.sweep()

    assert [p.name for p in (upload_dir / "staging").iterdir()] == [live.name]
