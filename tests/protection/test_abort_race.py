"""A client that aborts while the server verifies its upload: a clean abort, no traceback, no stray blob.

Found by the stateful schemathesis run (init → chunk → finalize → DELETE in quick succession).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from core.server.app import close_app, create_app
from core.server.blob_store import BlobStore


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    settings = {"upload_dir": tmp_path / "uploads", "auth_enabled": False, "ratelimit_enabled": False}
    app = create_app({**settings, "background_jobs": False})
    yield app
    close_app(app)


def test_abort_between_verification_and_store_ends_aborted_without_an_error(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    data = b"bag bytes " * 1000
    init = client.post(
        "/upload/init", json={"filename": "a.bag", "filesize": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    upload_id = init.json["upload_id"]
    assert client.put(f"/upload/{upload_id}/chunk/0", data=data).status_code == 201
    assert client.post(f"/upload/{upload_id}/finalize").status_code == 202
    store_part = BlobStore.store_part

    def abort_first(self: BlobStore, part_id: str, blob_id: str) -> None:
        assert client.delete(f"/upload/{part_id}").status_code == 200  # the client's DELETE wins the race
        store_part(self, part_id, blob_id)

    monkeypatch.setattr(BlobStore, "store_part", abort_first)
    jobs = app.extensions["job_runner"]

    with caplog.at_level(logging.INFO, logger="upload_server"):
        assert jobs.run_once() is True

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert jobs.run_once() is False  # the job is done, not queued for a retry
    assert client.get(f"/upload/{upload_id}").json["state"] == "aborted"
    assert not [p for p in (app.extensions["blob_store"].root / "store").rglob("*") if p.is_file()]
