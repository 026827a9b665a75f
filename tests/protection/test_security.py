"""Security headers on every reply, CORS only for configured origins, per-route body size limits."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from core.protocol import KiB, MiB
from core.server.keys import KeyStore
from tests.protection.conftest import bearer


@pytest.fixture
def robot(keys: KeyStore) -> dict[str, str]:
    return bearer(keys.create("robot-1").token)


@pytest.mark.parametrize(
    ("method", "path", "authorized", "status"),
    [
        ("GET", "/health", False, 200),
        ("GET", "/uploads", True, 200),
        ("GET", "/uploads", False, 401),
        ("GET", "/nope", False, 404),
        ("PATCH", "/uploads", True, 405),
        ("GET", "/boom", True, 500),
    ],
)
def test_every_reply_carries_the_security_headers(
    make_app: Callable[..., Flask], robot: dict[str, str], method: str, path: str, authorized: bool, status: int
) -> None:
    reply = make_app().test_client().open(path, method=method, headers=robot if authorized else {})

    assert reply.status_code == status
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.is_json
    assert "Strict-Transport-Security" not in reply.headers  # plain HTTP: HSTS would be ignored


def test_internal_error_reveals_no_traceback(make_app: Callable[..., Flask], robot: dict[str, str]) -> None:
    reply = make_app().test_client().get("/boom", headers=robot)

    assert reply.status_code == 500
    assert reply.json["error"]["code"] == "internal_error"
    assert "Traceback" not in reply.get_data(as_text=True)
    assert "ZeroDivision" not in reply.get_data(as_text=True)


def test_hsts_over_https(make_app: Callable[..., Flask]) -> None:
    reply = make_app().test_client().get("/health", base_url="https://localhost")

    assert reply.headers["Strict-Transport-Security"].startswith("max-age=")


def test_no_cors_by_default(make_app: Callable[..., Flask], robot: dict[str, str]) -> None:
    client = make_app().test_client()

    reply = client.get("/uploads", headers={**robot, "Origin": "https://evil.example"})
    preflight = client.options(
        "/upload/init", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )

    assert "Access-Control-Allow-Origin" not in reply.headers
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


def test_cors_for_a_configured_origin_only(make_app: Callable[..., Flask], robot: dict[str, str]) -> None:
    client = make_app(cors_origins=("https://dash.example.org",)).test_client()

    allowed = client.get("/uploads", headers={**robot, "Origin": "https://dash.example.org"})
    other = client.get("/uploads", headers={**robot, "Origin": "https://dash.example.org.evil.example"})

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example.org"
    assert "X-RateLimit-Remaining" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Origin" in allowed.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in allowed.headers


def test_cors_preflight_of_a_configured_origin(make_app: Callable[..., Flask]) -> None:
    client = make_app(cors_origins=("https://dash.example.org",)).test_client()

    reply = client.options(
        "/upload/u1/chunk/0",
        headers={
            "Origin": "https://dash.example.org",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, x-chunk-sha256",
        },
    )

    assert reply.status_code == 204  # an "ok status" for the Fetch standard's preflight
    assert reply.headers["Access-Control-Allow-Origin"] == "https://dash.example.org"
    assert "PUT" in reply.headers["Access-Control-Allow-Methods"]
    assert "X-Chunk-SHA256" in reply.headers["Access-Control-Allow-Headers"]
    assert "X-Chunk-CRC32C" in reply.headers["Access-Control-Allow-Headers"]
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]


def test_json_routes_refuse_bodies_over_max_json_size(make_app: Callable[..., Flask], robot: dict[str, str]) -> None:
    client = make_app(max_json_size=4 * KiB).test_client()
    big = {"filename": "x" * (5 * KiB)}

    reply = client.post("/upload/init", json=big, headers=robot)

    assert reply.status_code == 413
    assert reply.json["error"]["code"] == "payload_too_large"
    assert client.post("/upload/init", json={"filename": "ok"}, headers=robot).status_code == 201


def test_chunk_route_takes_up_to_max_chunk_size(make_app: Callable[..., Flask], robot: dict[str, str]) -> None:
    client = make_app(max_json_size=4 * KiB, max_chunk_size=1 * MiB, min_chunk_size=64 * KiB, default_chunk_size=MiB)
    client = client.test_client()

    fits = client.put("/upload/u1/chunk/0", data=b"\0" * MiB, headers=robot)
    too_big = client.put("/upload/u1/chunk/0", data=b"\0" * (MiB + 1), headers=robot)

    assert (fits.status_code, fits.json["size"]) == (200, MiB)
    assert too_big.status_code == 413
    assert too_big.json["error"]["code"] == "payload_too_large"


def chunked(client: FlaskClient, method: str, path: str, body: bytes, headers: dict[str, str]) -> TestResponse:
    """A request whose body has no Content-Length, as gunicorn passes on ``Transfer-Encoding: chunked``."""
    return client.open(
        path,
        method=method,
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunk_without_content_length_is_refused_with_411(
    make_app: Callable[..., Flask], robot: dict[str, str]
) -> None:
    """The chunk's length is checked against the upload before a byte is stored: an unknown length is refused."""
    app = make_app(max_chunk_size=MiB, min_chunk_size=64 * KiB, default_chunk_size=MiB)

    for size in (0, 10, 3 * MiB):
        reply = chunked(app.test_client(), "PUT", "/upload/u1/chunk/0", b"\0" * size, robot)

        assert reply.status_code == 411
        assert reply.json["error"]["code"] == "length_required"


@pytest.mark.parametrize(("size", "status"), [(KiB, 201), (8 * KiB, 413)])
def test_chunked_json_body_is_read_whole_under_the_limit_or_refused_with_413(
    make_app: Callable[..., Flask], robot: dict[str, str], size: int, status: int
) -> None:
    body = b'{"filename": "' + b"x" * size + b'"}'
    app = make_app(max_json_size=4 * KiB)

    reply = chunked(app.test_client(), "POST", "/upload/init", body, {**robot, "Content-Type": "application/json"})

    assert reply.status_code == status
    if status == 413:
        assert reply.json["error"]["code"] == "payload_too_large"
    else:
        assert reply.json["body"]["filename"] == "x" * size
