"""A state backend that is down or locked answers 503 with Retry-After, so robots back off instead of failing."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy import exc

from core.protocol import HEADER_RETRY_AFTER, ErrorCode
from core.server.app import close_app, create_app
from tests.helpers.postgres import PostgresServer
from tests.server.conftest import settings_for

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", f"/upload/{UNKNOWN_ID}", None),
        ("post", "/upload/init", {"filename": "a.bag", "filesize": 10, "chunks": 1}),
        ("get", "/uploads", None),
    ],
)
@pytest.mark.postgres
def test_a_postgresql_state_store_that_went_away_answers_503_json(
    tmp_path, postgres: PostgresServer, method, path, body
):
    url = postgres.create_database()
    app = create_app(settings_for(tmp_path, state_store_uri=url))
    client = app.test_client()
    assert client.get(f"/upload/{UNKNOWN_ID}").status_code == 404  # connected and serving
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    reply = getattr(client, method)(path, json=body)
    close_app(app)

    assert reply.status_code == 503
    assert reply.get_json()["error"]["code"] == ErrorCode.SERVICE_UNAVAILABLE.value
    assert int(reply.headers[HEADER_RETRY_AFTER]) > 0


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [
        ("database is locked", 503, ErrorCode.SERVICE_UNAVAILABLE),
        ("no such table: uploads", 500, ErrorCode.INTERNAL_ERROR),
    ],
)
def test_sqlite_contention_is_retryable_but_other_database_errors_are_not(tmp_path, monkeypatch, message, status, code):
    app = create_app(settings_for(tmp_path))
    state = app.extensions["state_store"]

    def fail(*_args, **_kwargs):
        raise exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    monkeypatch.setattr(state, "get_upload_with_receipts", fail)  # the one read of GET /upload/<id>
    reply = app.test_client().get(f"/upload/{UNKNOWN_ID}")

    assert reply.status_code == status
    assert reply.get_json()["error"]["code"] == code.value
    assert "Traceback" not in reply.get_data(as_text=True)
