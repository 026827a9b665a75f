"""Fixtures of the protection tests: a stub app with the real protection layers, keys, servers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify, request

from core.config import ServerConfig
from core.protocol import CHUNK_PATH, FINALIZE_PATH, HEALTH_PATH, INIT_PATH, UPLOAD_PATH, UPLOADS_PATH
from core.server import auth, limits, proxies, security
from core.server.errors import register_error_handlers
from core.server.identity import current_identity
from core.server.keys import KeyStore, key_store, key_store_for
from tests.helpers.servers import GunicornServer


def stub_app(config: ServerConfig) -> Flask:
    """The upload routes as stubs that echo the caller, behind the real auth, limits and hardening."""
    app = Flask("stub")
    register_error_handlers(app)

    def whoami(**params: Any) -> Any:
        identity = current_identity()
        return jsonify({"success": True, "name": identity.name, "admin": identity.admin, **params})

    app.add_url_rule(HEALTH_PATH, "health", lambda: jsonify({"status": "ok"}))
    app.add_url_rule(INIT_PATH, "init", lambda: (whoami(body=request.get_json()), 201), methods=["POST"])
    app.add_url_rule(CHUNK_PATH, "chunk", lambda **p: whoami(size=len(request.get_data()), **p), methods=["PUT"])
    app.add_url_rule(UPLOAD_PATH, "upload", whoami, methods=["GET", "DELETE"])
    app.add_url_rule(FINALIZE_PATH, "finalize", whoami, methods=["POST"])
    app.add_url_rule(UPLOADS_PATH, "uploads", whoami)
    app.add_url_rule("/boom", "boom", lambda: 1 / 0)
    auth.init_app(app, config)
    security.init_app(app, config)
    limits.init_app(app, config)
    proxies.init_app(app, config)
    return app


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServerConfig]:
    def make(**overrides: Any) -> ServerConfig:
        return ServerConfig.from_env({}, upload_dir=tmp_path / "uploads", **overrides)

    return make


@pytest.fixture
def make_app(make_config: Callable[..., ServerConfig]) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        apps.append(stub_app(make_config(**overrides)))
        return apps[-1]

    yield make
    for app in apps:  # close the key store's database connections (a PostgreSQL pool warns when collected open)
        key_store(app).close()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    """The key store the stub apps of this test read (same storage root)."""
    return key_store_for(tmp_path / "uploads")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """A real gunicorn (2 workers) with auth on and limits off, shared by one test module."""
    root = tmp_path_factory.mktemp("live")
    with GunicornServer(root / "uploads", workers=2, auth=True) as server:
        yield server


def upload_small_file(
    server: GunicornServer, content: bytes, *, key: str | None = None, filename: str = "a.bag"
) -> requests.Response:
    """init + the one chunk; returns the init reply (4xx replies are returned, not raised)."""
    headers = server.headers(key)
    init = requests.post(
        server.url + INIT_PATH,
        json={
            "filename": filename,
            "filesize": len(content),
            "chunks": 1,
            "sha256": hashlib.sha256(content).hexdigest(),
        },
        headers=headers,
        timeout=10,
    )
    if init.status_code < 300 and not init.json().get("received"):
        chunk = requests.put(
            f"{server.url}/upload/{init.json()['upload_id']}/chunk/0", data=content, headers=headers, timeout=10
        )
        assert chunk.status_code in (200, 201), chunk.text
    return init
