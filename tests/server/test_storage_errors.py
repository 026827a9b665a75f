"""One error handler tells a full disk (507), a busy database (503) and a bug (500) apart, whatever layer raised it."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from flask import Flask, Response, request, stream_with_context

from core.protocol import ErrorCode
from core.server import failures
from core.server.errors import register_error_handlers


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    err = sqlite3.OperationalError(message)
    err.sqlite_errorcode = code  # type: ignore[attr-defined]
    return err


class PsycopgDiskFull(Exception):
    """Shaped like psycopg.errors.DiskFull: what matters is the SQLSTATE."""

    sqlstate = "53100"


class PsycopgDeadlock(Exception):
    """Shaped like psycopg.errors.DeadlockDetected."""

    sqlstate = "40P01"


def wrapped(err: Exception) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("INSERT INTO robots ...", {}, err)


def chained(err: Exception) -> RuntimeError:
    try:
        raise err
    except Exception as inner:
        try:
            raise RuntimeError("store failed") from inner
        except RuntimeError as outer:
            return outer


FULL = sqlite_error("database or disk is full", sqlite3.SQLITE_FULL)
IOERR_SHMSIZE = sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR | (19 << 8))
LOCKED = sqlite_error("database is locked", sqlite3.SQLITE_BUSY)

STORAGE_FULL: dict[str, Exception] = {
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "EDQUOT": OSError(errno.EDQUOT, "Disk quota exceeded"),
    "sqlite full": FULL,
    "sqlalchemy wrapping sqlite full": wrapped(FULL),
    "postgresql disk_full": PsycopgDiskFull("could not extend file"),
    "sqlalchemy wrapping postgresql disk_full": wrapped(PsycopgDiskFull("could not extend file")),
    "raised from ENOSPC": chained(OSError(errno.ENOSPC, "No space left on device")),
}


@pytest.mark.parametrize("err", STORAGE_FULL.values(), ids=STORAGE_FULL.keys())
def test_every_layers_disk_full_is_recognised(err: Exception) -> None:
    assert failures.is_storage_full(err)


@pytest.mark.parametrize(
    "err",
    [OSError(errno.EIO, "I/O error"), sqlite_error("no such table: uploads", sqlite3.SQLITE_ERROR), ValueError("x")],
)
def test_other_errors_are_not_a_full_disk(err: Exception, tmp_path: Path) -> None:
    assert not failures.is_storage_full(err, tmp_path)


@pytest.mark.parametrize("err", [IOERR_SHMSIZE, wrapped(IOERR_SHMSIZE)], ids=["sqlite", "sqlalchemy"])
def test_a_disk_io_error_is_a_full_disk_only_when_the_storage_root_is_nearly_full(
    err: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not failures.is_storage_full(err, tmp_path)

    monkeypatch.setattr(failures, "IOERR_FREE_FLOOR", 1 << 62)

    assert failures.is_storage_full(err, tmp_path)


@pytest.mark.parametrize(
    "err",
    [LOCKED, wrapped(LOCKED), wrapped(PsycopgDeadlock("deadlock detected"))],
    ids=["sqlite", "sqlalchemy", "postgresql deadlock"],
)
def test_a_locked_database_is_contention(err: Exception) -> None:
    assert failures.is_contention(err)
    assert not failures.is_storage_full(err)


def app_raising(err: Exception, tmp_path: Path) -> Flask:
    app = Flask("raising")
    app.extensions["server_config"] = type("Config", (), {"upload_dir": tmp_path})()
    register_error_handlers(app)

    def view() -> Any:
        raise err

    def after(response: Response) -> Response:
        raise err

    def stream() -> Response:
        def events() -> Any:
            yield "event: state\ndata: {}\n\n"
            raise err

        return Response(stream_with_context(events()), mimetype="text/event-stream")

    app.add_url_rule("/view", "view", view)
    app.add_url_rule("/hooked", "hooked", lambda: "ok")
    app.add_url_rule("/events", "events", stream)
    app.after_request_funcs.setdefault(None, []).insert(0, lambda r: after(r) if request.path == "/hooked" else r)
    return app


CASES: dict[str, tuple[Callable[[], Exception], int, ErrorCode]] = {
    "disk full": (lambda: wrapped(FULL), 507, ErrorCode.INSUFFICIENT_STORAGE),
    "quota": (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), 507, ErrorCode.INSUFFICIENT_STORAGE),
    "locked": (lambda: wrapped(LOCKED), 503, ErrorCode.SERVICE_UNAVAILABLE),
    "bug": (lambda: ZeroDivisionError("boom"), 500, ErrorCode.INTERNAL_ERROR),
}


@pytest.mark.parametrize("path", ["/view", "/hooked"], ids=["in the view", "in an after_request hook"])
@pytest.mark.parametrize(("make", "status", "code"), CASES.values(), ids=CASES.keys())
def test_the_handler_answers_json_with_the_status_the_failure_deserves(
    tmp_path: Path, path: str, make: Callable[[], Exception], status: int, code: ErrorCode
) -> None:
    reply = app_raising(make(), tmp_path).test_client().get(path)

    assert reply.status_code == status
    assert reply.mimetype == "application/json"
    assert reply.json["error"]["code"] == code.value
    assert reply.json["success"] is False


def test_an_event_stream_whose_storage_fills_ends_with_an_error_event(tmp_path: Path) -> None:
    reply = app_raising(wrapped(FULL), tmp_path).test_client().get("/events")

    assert reply.status_code == 200
    body = reply.get_data(as_text=True)
    assert body.startswith("event: state\n")
    assert '\nevent: error\ndata: {"success": false, "error": {"code": "insufficient_storage"' in body
    assert '"status": 507' in body


def test_an_event_stream_with_a_bug_still_raises(tmp_path: Path) -> None:
    client = app_raising(ZeroDivisionError("boom"), tmp_path).test_client()

    with pytest.raises(ZeroDivisionError):
        client.get("/events").get_data()


def test_statvfs_of_a_missing_root_is_not_a_full_disk(tmp_path: Path) -> None:
    assert not failures.nearly_full(tmp_path / "missing")
    assert not failures.nearly_full(None)
