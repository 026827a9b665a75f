"""Request JSON is parsed in one place: any body that is not a JSON document is a 400 JSON error, never a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from core.protocol import ErrorCode
from core.server.app import create_app
from tests.server.conftest import settings_for

DEEP = b"[" * 10_000  # 10 KB: under the JSON size limit, far over Python's recursion limit
DEEP_OBJECT = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
JSON_ROUTES = {
    "init": "/upload/init",
    "heartbeat": "/robots/robot-1/heartbeat",
    "dashboard command": "/dashboard/api/robots/robot-1/commands",
}


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return create_app(settings_for(tmp_path / "uploads")).test_client()


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["10 KB of [", "nested objects"])
@pytest.mark.parametrize("path", JSON_ROUTES.values(), ids=JSON_ROUTES.keys())
def test_a_deeply_nested_body_is_a_400_json_error(client: FlaskClient, path: str, body: bytes) -> None:
    # A key header: the dashboard's command route then needs no CSRF token (auth is off here).
    headers = {"Content-Type": "application/json", "X-API-Key": "k"}

    reply = client.post(path, data=body, headers=headers)

    assert reply.status_code == 400, reply.get_data(as_text=True)[:300]
    assert reply.json["success"] is False
    assert reply.json["error"]["code"] == ErrorCode.INVALID_JSON.value


def test_nesting_a_real_client_sends_is_still_accepted(client: FlaskClient) -> None:
    metadata: object = "leaf"
    for _ in range(50):
        metadata = {"nested": metadata}

    reply = client.post("/upload/init", json={"filename": "a.bag", "filesize": 10, "metadata": metadata})

    assert reply.status_code == 201, reply.json


@pytest.mark.parametrize("sent_at", [{"t": 1}, "yesterday", [1], True])
def test_a_heartbeat_whose_sent_at_is_not_a_number_is_refused(client: FlaskClient, sent_at: object) -> None:
    reply = client.post("/robots/robot-1/heartbeat", json={"sent_at": sent_at})

    assert reply.status_code == 400
    assert reply.json["error"]["code"] == ErrorCode.INVALID_FIELD.value
