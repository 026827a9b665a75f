"""HTTP edges the app itself can see: OPTIONS and Allow name the route's own methods; routing errors win over size."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from core.protocol import KiB
from core.server.app import create_app
from tests.server.conftest import settings_for

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return create_app(settings_for(tmp_path / "uploads")).test_client()


def allowed(reply_allow: str) -> set[str]:
    return {method.strip() for method in reply_allow.split(",")}


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/upload/init", {"POST", "OPTIONS"}),
        (f"/upload/{UPLOAD_ID}", {"GET", "HEAD", "DELETE", "OPTIONS"}),
        (f"/upload/{UPLOAD_ID}/chunk/0", {"PUT", "OPTIONS"}),
        (f"/upload/{UPLOAD_ID}/finalize", {"POST", "OPTIONS"}),
        ("/uploads", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_options_names_exactly_the_methods_of_the_route_the_path_resolves_to(
    client: FlaskClient, path: str, methods: set[str]
) -> None:
    reply = client.options(path)

    assert reply.status_code == 204
    assert reply.get_data() == b""
    assert allowed(reply.headers["Allow"]) == methods


def test_options_on_an_unknown_path_is_a_404_json(client: FlaskClient) -> None:
    reply = client.options("/no/such/route")

    assert reply.status_code == 404
    assert reply.json["error"]["code"] == "not_found"


def test_a_wrong_method_is_a_405_json_with_allow(client: FlaskClient) -> None:
    reply = client.patch(f"/upload/{UPLOAD_ID}")

    assert reply.status_code == 405
    assert reply.json["error"]["code"] == "method_not_allowed"
    assert allowed(reply.headers["Allow"]) == {"GET", "HEAD", "DELETE", "OPTIONS"}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("PUT", f"/upload/{UPLOAD_ID}/chunk/abc", 404, "not_found"),
        ("PUT", "/no/such/route", 404, "not_found"),
        ("PATCH", f"/upload/{UPLOAD_ID}", 405, "method_not_allowed"),
    ],
)
def test_a_routing_error_wins_over_the_body_limit(
    client: FlaskClient, method: str, path: str, status: int, code: str
) -> None:
    reply = client.open(path, method=method, data=b"x" * (100 * KiB))

    assert reply.status_code == status
    assert reply.json["error"]["code"] == code


def test_a_routed_json_route_still_refuses_a_body_over_its_limit(client: FlaskClient) -> None:
    reply = client.post("/upload/init", data=b"x" * (100 * KiB), content_type="application/json")

    assert reply.status_code == 413
    assert reply.json["error"]["code"] == "payload_too_large"
