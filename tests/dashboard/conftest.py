"""Fixtures of the dashboard tests: the real app factory with its protection layers, keys, heartbeats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.config import ServerConfig
from core.server.app import close_app, create_app
from core.server.keys import KeyStore, key_store


def build_app(upload_dir: Path, **overrides: Any) -> Flask:
    config = ServerConfig.from_env({}, upload_dir=upload_dir, sweep_interval=0.0, **overrides)
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def make_app(upload_dir: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        overrides.setdefault("ratelimit_enabled", False)
        apps.append(build_app(upload_dir, **overrides))
        return apps[-1]

    yield make
    for app in apps:  # every store shares the app's engine: this closes their database connections
        close_app(app)


@pytest.fixture
def keys(app: Flask) -> KeyStore:
    """The key store the test's apps read: the state database (SQLite in UPLOAD_DIR, or STATE_STORE_URI)."""
    return key_store(app)


@pytest.fixture
def admin_key(keys: KeyStore) -> str:
    return keys.create("operator", admin=True).token


@pytest.fixture
def robot_key(keys: KeyStore) -> str:
    return keys.create("robot-1").token


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(auth_enabled=True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def heartbeat(client: FlaskClient, robot_id: str, key: str, **body: Any) -> Any:
    return client.post(f"/robots/{robot_id}/heartbeat", json=body, headers=bearer(key))
