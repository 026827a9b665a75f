"""Who sees the dashboard: admin sign-in with a signed HttpOnly cookie, key headers for scripts, CSRF on commands."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.config import ServerConfig
from core.server.keys import KeyStore
from dashboard.access import SECRET_FILE, load_secret_key
from tests.dashboard.conftest import bearer

STATE = "/dashboard/api/state"


def csrf_of(client: FlaskClient, path: str = "/dashboard/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match is not None
    return match.group(1)


def sign_in(client: FlaskClient, key: str) -> int:
    token = csrf_of(client)
    return client.post("/dashboard/login", data={"key": key, "csrf_token": token}).status_code


def test_page_redirects_to_sign_in_when_anonymous(client: FlaskClient) -> None:
    reply = client.get("/dashboard/")
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith("/dashboard/login")


def test_state_needs_sign_in(client: FlaskClient) -> None:
    reply = client.get(STATE)
    assert reply.status_code == 401
    assert reply.json["error"]["code"] == "unauthorized"


def test_admin_key_signs_in_with_httponly_samesite_cookie(client: FlaskClient, admin_key: str) -> None:
    token = csrf_of(client)
    reply = client.post("/dashboard/login", data={"key": admin_key, "csrf_token": token})
    assert reply.status_code == 302
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert admin_key not in cookie
    assert client.get(STATE).status_code == 200
    assert client.get("/dashboard/").status_code == 200


@pytest.mark.parametrize("which", ["robot", "wrong"])
def test_robot_or_wrong_keys_cannot_sign_in(client: FlaskClient, robot_key: str, which: str) -> None:
    key = robot_key if which == "robot" else "rbk_000000000000_nope"
    assert sign_in(client, key) == 401
    assert client.get(STATE).status_code == 401


def test_sign_in_form_needs_its_csrf_token(client: FlaskClient, admin_key: str) -> None:
    client.get("/dashboard/login")
    assert client.post("/dashboard/login", data={"key": admin_key}).status_code == 403
    assert client.get(STATE).status_code == 401


def test_revoking_the_key_ends_the_session(client: FlaskClient, keys: KeyStore, admin_key: str) -> None:
    assert sign_in(client, admin_key) == 302
    keys.revoke("operator")
    assert client.get(STATE).status_code == 401


def test_scripts_send_an_admin_key_header(client: FlaskClient, admin_key: str, robot_key: str) -> None:
    assert client.get(STATE, headers=bearer(admin_key)).status_code == 200
    assert client.get(STATE, headers={"X-API-Key": admin_key}).status_code == 200
    assert client.get(STATE, headers=bearer(robot_key)).status_code == 401


def test_signed_in_operator_writes_through_the_api_only_with_the_csrf_token(
    client: FlaskClient, admin_key: str
) -> None:
    sign_in(client, admin_key)
    assert client.get("/uploads").status_code == 200
    assert client.delete("/upload/0123456789abcdef").status_code == 401
    assert client.delete("/upload/0123456789abcdef", headers={"X-CSRF-Token": "forged"}).status_code == 401
    token = csrf_of(client, "/dashboard/")
    # Past the key check as the operator: the upload is simply unknown.
    assert client.delete("/upload/0123456789abcdef", headers={"X-CSRF-Token": token}).status_code == 404


def test_session_commands_need_the_csrf_token(client: FlaskClient, admin_key: str) -> None:
    sign_in(client, admin_key)
    url = "/dashboard/api/robots/robot-1/commands"
    refused = client.post(url, json={"action": "pause"})
    assert refused.status_code == 403
    assert "CSRF" in refused.json["error"]["message"]
    token = csrf_of(client, "/dashboard/")
    accepted = client.post(url, json={"action": "pause"}, headers={"X-CSRF-Token": token})
    assert accepted.status_code == 202
    assert accepted.json["command"]["state"] == "pending"
    assert accepted.json["command"]["issued_by"] == "operator"


def test_key_header_commands_need_no_csrf_token(client: FlaskClient, admin_key: str, robot_key: str) -> None:
    url = "/dashboard/api/robots/robot-1/commands"
    assert client.post(url, json={"action": "split"}, headers=bearer(admin_key)).status_code == 202
    assert client.post(url, json={"action": "split"}, headers=bearer(robot_key)).status_code == 401


@pytest.mark.parametrize(
    "body", [{"action": "explode"}, {"action": "pause", "args": [1]}, {"action": "stop", "args": False}, [1]]
)
def test_bad_commands_are_refused(client: FlaskClient, admin_key: str, body: object) -> None:
    reply = client.post("/dashboard/api/robots/robot-1/commands", json=body, headers=bearer(admin_key))
    assert reply.status_code == 400
    assert reply.json["success"] is False


def test_sign_out_clears_the_session(client: FlaskClient, admin_key: str) -> None:
    sign_in(client, admin_key)
    token = csrf_of(client, "/dashboard/")
    client.post("/dashboard/logout", data={"csrf_token": token})
    assert client.get(STATE).status_code == 401


def test_generated_secret_key_is_private_and_shared(make_app: Callable[..., Flask], upload_dir: Path) -> None:
    first, second = make_app(auth_enabled=True), make_app(auth_enabled=True)
    assert first.secret_key == second.secret_key
    mode = stat.S_IMODE(os.stat(upload_dir / SECRET_FILE).st_mode)
    assert mode == 0o600


def test_configured_secret_key_wins(tmp_path: Path) -> None:
    config = ServerConfig.from_env({"SECRET_KEY": "from-env"}, upload_dir=tmp_path)
    assert load_secret_key(config) == "from-env"
    assert not (tmp_path / SECRET_FILE).exists()


def test_pages_forbid_inline_scripts(client: FlaskClient) -> None:
    csp = client.get("/dashboard/login").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def session_cookie_of_sign_in(client: FlaskClient, key: str, environ: dict[str, str], base_url: str) -> str:
    token = csrf_of(client)
    data = {"key": key, "csrf_token": token}
    reply = client.post("/dashboard/login", data=data, environ_base=environ, base_url=base_url)
    assert reply.status_code == 302
    return reply.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("trusted", "scheme", "forwarded_proto", "secure"),
    [
        ((), "http", None, False),  # plain HTTP (a test box): a browser would drop a Secure cookie
        (("127.0.0.1",), "http", "https", True),  # nginx terminated TLS
        (("1",), "http", "https", True),  # the same, TRUSTED_PROXIES as a hop count
        ((), "http", "https", False),  # nobody trusted: the header is only a client's claim
        ((), "https", None, True),  # TLS served by gunicorn itself
    ],
)
def test_session_cookie_is_secure_whenever_the_browser_used_https(
    make_app: Callable[..., Flask],
    admin_key: str,
    trusted: tuple[str, ...],
    scheme: str,
    forwarded_proto: str | None,
    secure: bool,
) -> None:
    client = make_app(auth_enabled=True, trusted_proxies=trusted).test_client()
    environ = {"HTTP_X_FORWARDED_PROTO": forwarded_proto} if forwarded_proto else {}
    cookie = session_cookie_of_sign_in(client, admin_key, environ, f"{scheme}://localhost")
    assert ("; Secure" in cookie) is secure


@pytest.fixture
def limited_client(make_app: Callable[..., Flask]) -> FlaskClient:
    app = make_app(auth_enabled=True, ratelimit_enabled=True, dashboard_signin_limit="3 per minute")
    return app.test_client()


def test_sign_in_attempts_are_limited_per_address_and_the_page_says_so(
    limited_client: FlaskClient, admin_key: str
) -> None:
    for _ in range(3):
        assert sign_in(limited_client, "rbk_000000000000_guess") == 401
    token = csrf_of(limited_client)
    refused = limited_client.post("/dashboard/login", data={"key": admin_key, "csrf_token": token})

    assert refused.status_code == 429
    assert refused.mimetype == "text/html"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many sign-in attempts" in refused.get_data(as_text=True)
    assert limited_client.get(STATE).status_code == 401  # even the right key waits
    assert limited_client.get("/dashboard/login").status_code == 200  # viewing the form is not an attempt

    elsewhere = limited_client.application.test_client()
    token = csrf_of(elsewhere)
    other = elsewhere.post(
        "/dashboard/login", data={"key": admin_key, "csrf_token": token}, environ_base={"REMOTE_ADDR": "10.0.0.7"}
    )
    assert other.status_code == 302


def test_scripts_get_the_sign_in_429_as_json(limited_client: FlaskClient) -> None:
    for _ in range(3):
        sign_in(limited_client, "rbk_000000000000_guess")
    reply = limited_client.post("/dashboard/login", data={"key": "x"}, headers={"Accept": "application/json"})
    assert reply.status_code == 429
    assert reply.json["success"] is False
    assert reply.json["error"]["code"] == "rate_limited"
    assert "Retry-After" in reply.headers


def test_sign_in_is_not_limited_when_rate_limits_are_off(make_app: Callable[..., Flask], admin_key: str) -> None:
    client = make_app(auth_enabled=True, ratelimit_enabled=False, dashboard_signin_limit="1 per minute").test_client()
    assert [sign_in(client, "wrong") for _ in range(3)] == [401, 401, 401]
    assert sign_in(client, admin_key) == 302
