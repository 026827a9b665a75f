"""Fixtures for the upload server: a test app on a temporary storage root and a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request
from flask.testing import FlaskClient

from core.server.app import close_app, create_app
from core.server.identity import Identity
from core.server.jobs import JobRunner
from core.server.service import UploadService
from tests.server.uploads import Upload

# Small chunks keep unit tests fast; the protocol logic does not depend on the size.
CHUNK = 1024


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_for(upload_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "upload_dir": upload_dir,
        "auth_enabled": False,
        "ratelimit_enabled": False,
        "background_jobs": False,
        "min_chunk_size": 16,
        "compression_threshold": 0,
        "compression_level": 3,
        **overrides,
    }


def _identity_from_test_header() -> None:
    """Auth is another component; tests pick the caller with a header instead."""
    raw = request.headers.get("X-Test-Identity")
    if raw:
        name, role = raw.split(":")
        g.identity = Identity(name, admin=role == "admin")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_app(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Flask]]:
    """Build apps on one storage root (two calls = the server restarted); settings override the defaults."""
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(settings_for(tmp_path / "uploads", **overrides))
        app.before_request(_identity_from_test_header)
        app.extensions["upload_service"].clock = clock
        apps.append(app)
        return app

    yield build
    for app in apps:
        close_app(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def service(app: Flask) -> UploadService:
    return app.extensions["upload_service"]  # type: ignore[no-any-return]


@pytest.fixture
def jobs(app: Flask) -> JobRunner:
    return app.extensions["job_runner"]  # type: ignore[no-any-return]


@pytest.fixture
def upload_dir(app: Flask) -> Path:
    return app.extensions["server_config"].upload_dir  # type: ignore[no-any-return]


@pytest.fixture
def new_upload(client: FlaskClient) -> Callable[..., Upload]:
    def build(data: bytes, chunk_size: int = CHUNK, **fields: Any) -> Upload:
        return Upload(client, data, chunk_size, **fields)

    return build
