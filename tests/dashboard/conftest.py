"""Fixtures of the dashboard tests: the real app factory with its protection layers, keys, heartbeats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core.config import ServerConfig
from core.server.app import create_app
from core.server.keys import KeyStore, key_store
from tests.helpers.redis_server import RedisServer

ROBOT_STORE_BACKENDS = ("sqlite", "redis")


def build_app(upload_dir: Path, **overrides: Any) -> Flask:
    config = ServerConfig.from_env({}, upload_dir=upload_dir, sweep_interval=0.0, **overrides)
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the Redis-backed variants; each test flushes the database it uses."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty Redis database, as a fresh scale-out deployment would start with."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def make_app(upload_dir: Path) -> Callable[..., Flask]:
    def make(**overrides: Any) -> Flask:
        overrides.setdefault("ratelimit_enabled", False)
        return build_app(upload_dir, **overrides)

    return make


@pytest.fixture
def keys(app: Flask) -> KeyStore:
    """The key store the test's apps read: SQLite in UPLOAD_DIR, or Redis when the app has STATE_STORE_URI."""
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
