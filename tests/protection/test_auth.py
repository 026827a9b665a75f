"""Every route but the public ones needs a valid key; the caller's identity reaches the views."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Blueprint, Flask, jsonify

from core.server import auth
from core.server.identity import Identity
from core.server.keys import KeyStore
from tests.protection.conftest import bearer

PROTECTED = [
    ("POST", "/upload/init"),
    ("PUT", "/upload/u1/chunk/0"),
    ("GET", "/upload/u1"),
    ("DELETE", "/upload/u1"),
    ("POST", "/upload/u1/finalize"),
    ("GET", "/uploads"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_key_is_401_json(make_app: Callable[..., Flask], method: str, path: str) -> None:
    reply = make_app().test_client().open(path, method=method, json={})

    assert reply.status_code == 401
    assert reply.json == {
        "success": False,
        "error": {"code": "unauthorized", "message": reply.json["error"]["message"]},
    }
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Bearer rbk_0123456789ab_" + "A" * 43}, id="unknown-bearer"),
        pytest.param({"X-API-Key": "not-a-key"}, id="garbage-x-api-key"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    ],
)
def test_wrong_key_is_401(make_app: Callable[..., Flask], headers: dict[str, str]) -> None:
    reply = make_app().test_client().get("/uploads", headers=headers)

    assert reply.status_code == 401
    assert reply.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_valid_key_sets_the_identity(make_app: Callable[..., Flask], keys: KeyStore, header: str) -> None:
    token = keys.create("robot-3").token
    value = f"Bearer {token}" if header == "Authorization" else token

    reply = make_app().test_client().get("/uploads", headers={header: value})

    assert reply.status_code == 200
    assert (reply.json["name"], reply.json["admin"]) == ("robot-3", False)


def test_admin_key_is_admin(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    reply = make_app().test_client().get("/uploads", headers=bearer(keys.create("ops", admin=True).token))

    assert (reply.json["name"], reply.json["admin"]) == ("ops", True)


def test_revoked_key_is_refused_by_a_running_app(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    token = keys.create("robot-1").token
    client = make_app().test_client()
    assert client.get("/uploads", headers=bearer(token)).status_code == 200

    keys.revoke("robot-1")

    assert client.get("/uploads", headers=bearer(token)).status_code == 401


def test_health_is_open(make_app: Callable[..., Flask]) -> None:
    assert make_app().test_client().get("/health").status_code == 200


def test_unknown_route_is_404_not_401(make_app: Callable[..., Flask]) -> None:
    reply = make_app().test_client().get("/nope")

    assert reply.status_code == 404
    assert reply.json["error"]["code"] == "not_found"


def test_public_view_and_blueprint_need_no_key(make_config: Callable[..., object]) -> None:
    from tests.protection.conftest import stub_app

    app = stub_app(make_config())
    app.add_url_rule("/open", "open", auth.public(lambda: jsonify({"ok": True})))
    bp = auth.public(Blueprint("pages", __name__))
    bp.add_url_rule("/pages/signin", "signin", lambda: "sign in")
    app.register_blueprint(bp)
    client = app.test_client()

    assert client.get("/open").status_code == 200
    assert client.get("/pages/signin").status_code == 200
    assert client.get("/uploads").status_code == 401


def test_identity_loader_signs_in_without_a_key(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    auth.add_identity_loader(app, lambda: Identity("dashboard-user", admin=True))

    reply = app.test_client().get("/uploads")

    assert (reply.json["name"], reply.json["admin"]) == ("dashboard-user", True)


def test_identity_for_key_serves_the_dashboard(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    token = keys.create("ops", admin=True).token

    with make_app().app_context():
        assert auth.identity_for_key(token) == Identity("ops", admin=True)
        assert auth.identity_for_key("wrong") is None


def test_auth_off_is_anonymous_admin_and_warns(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="upload_server.auth"):
        app = make_app(auth_enabled=False)

    reply = app.test_client().get("/uploads")

    assert (reply.json["name"], reply.json["admin"]) == ("anonymous", True)
    assert any("AUTH_ENABLED=0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_preflight_needs_no_key(make_app: Callable[..., Flask]) -> None:
    reply = make_app().test_client().options("/upload/init")

    assert reply.status_code == 204
