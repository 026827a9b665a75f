"""API errors: every failure the server reports carries an HTTP status and a protocol ``ErrorCode``.

The classes subclass werkzeug's ``HTTPException`` (not Flask) so the upload
service can raise them without knowing about requests, and one handler
(``register_error_handlers``) renders them, werkzeug's own 404/405/413 and any
unexpected exception as the same JSON document.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask, Response, current_app, jsonify
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError

from core.protocol import HEADER_CONTENT_RANGE, HEADER_RETRY_AFTER, ErrorCode
from core.server.blobs.base import StoreUnavailable
from core.server.failures import is_contention, is_storage_full

log = logging.getLogger("upload_server")

# werkzeug's and extensions' exceptions carry only a status: map it onto our codes.
_CODE_FOR_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.UPLOAD_EXPIRED,
    411: ErrorCode.LENGTH_REQUIRED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.SERVICE_UNAVAILABLE,
    507: ErrorCode.INSUFFICIENT_STORAGE,
}


class ApiError(HTTPException):
    """Base of every error the server raises on purpose; ``details`` adds fields to the JSON ``error``."""

    code = 400
    error_code = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class InvalidJson(ApiError):
    error_code = ErrorCode.INVALID_JSON


class InvalidField(ApiError):
    error_code = ErrorCode.INVALID_FIELD


class Unauthorized(ApiError):
    code = 401
    error_code = ErrorCode.UNAUTHORIZED


class Forbidden(ApiError):
    code = 403
    error_code = ErrorCode.FORBIDDEN


class PayloadTooLarge(ApiError):
    code = 413
    error_code = ErrorCode.PAYLOAD_TOO_LARGE


class LengthRequired(ApiError):
    code = 411
    error_code = ErrorCode.LENGTH_REQUIRED


class UnsupportedMediaType(ApiError):
    code = 415
    error_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class NotFound(ApiError):
    code = 404
    error_code = ErrorCode.NOT_FOUND


class Conflict(ApiError):
    code = 409
    error_code = ErrorCode.CONFLICT


class UploadIncomplete(Conflict):
    error_code = ErrorCode.UPLOAD_INCOMPLETE


class UploadExpired(ApiError):
    code = 410
    error_code = ErrorCode.UPLOAD_EXPIRED


class FileTooLarge(ApiError):
    code = 413
    error_code = ErrorCode.FILE_TOO_LARGE


class ChunkIndexOutOfRange(ApiError):
    error_code = ErrorCode.CHUNK_INDEX_OUT_OF_RANGE


class ChunkSizeMismatch(ApiError):
    error_code = ErrorCode.CHUNK_SIZE_MISMATCH


class ChecksumMismatch(ApiError):
    error_code = ErrorCode.CHECKSUM_MISMATCH


class ChecksumConflict(ChecksumMismatch):
    """A finalize declares a whole-file sha256 other than the one the upload already holds."""

    code = 409


class InsufficientStorage(ApiError):
    code = 507
    error_code = ErrorCode.INSUFFICIENT_STORAGE


class PartDataLost(ApiError):
    """The server lost an unfinished upload's received data: 410 makes the client start a new upload."""

    code = 410
    error_code = ErrorCode.PART_MISSING


class RangeNotSatisfiable(ApiError):
    code = 416
    error_code = ErrorCode.RANGE_NOT_SATISFIABLE

    def __init__(self, message: str, *, length: int) -> None:
        super().__init__(message, details={"length": length})
        self.length = length

    def get_headers(self, *_args: Any, **_kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(), (HEADER_CONTENT_RANGE, f"bytes */{self.length}")]


def error_body(code: ErrorCode | str, message: str, **details: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": str(getattr(code, "value", code)), "message": message, **details}}


def error_response(status: int, code: ErrorCode | str, message: str, **details: Any) -> Response:
    """The JSON error document as a response, for errors answered without raising (e.g. a 429 from a limiter)."""
    response = jsonify(error_body(code, message, **details))
    response.status_code = status
    return response


def _render_http_error(err: HTTPException) -> Response:
    if isinstance(err, InternalServerError) and isinstance(err.original_exception, Exception):
        # An exception outside the view (an after_request hook, a streamed body) reaches Flask's
        # handle_exception wrapped in a 500: classify what it wraps like any other.
        return _render_unexpected(err.original_exception)
    status = err.code or 500
    if isinstance(err, ApiError):
        response = error_response(status, err.error_code, err.description or "", **err.details)
    else:
        code = _CODE_FOR_STATUS.get(status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST)
        response = error_response(status, code, err.description or err.name)
    # Keep protocol headers werkzeug/extensions attach (Allow on 405, Retry-After on 429/503).
    for name, value in err.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


# A state backend that is down or saturated is the server's fault, not the client's: 503 with a
# Retry-After makes robots back off and retry instead of failing the upload.
BACKEND_RETRY_AFTER = 5


def _render_backend_unavailable(err: Exception) -> Response:
    log.error("State backend unavailable: %s: %s", type(err).__name__, err)
    response = error_response(503, ErrorCode.SERVICE_UNAVAILABLE, "state backend unavailable; retry later")
    response.headers[HEADER_RETRY_AFTER] = str(BACKEND_RETRY_AFTER)
    return response


def _render_store_unavailable(err: StoreUnavailable) -> Response:
    # The object store down mid-upload: nothing was acknowledged, the client retries after Retry-After.
    log.error("Blob store unavailable: %s", err)
    response = error_response(503, ErrorCode.SERVICE_UNAVAILABLE, "storage backend unavailable; retry later")
    response.headers[HEADER_RETRY_AFTER] = str(BACKEND_RETRY_AFTER)
    return response


STORAGE_FULL_MESSAGE = "the server's storage is full; retry later"
EVENT_STREAM = "text/event-stream"


def _storage_root() -> Path | None:
    config = current_app.extensions.get("server_config")
    return getattr(config, "upload_dir", None)


def _render_insufficient_storage(err: BaseException) -> Response:
    log.error("Storage full, request refused with 507: %s: %s", type(err).__name__, err)
    return _render_http_error(InsufficientStorage(STORAGE_FULL_MESSAGE))


def _render_database_error(err: sa_exc.DBAPIError) -> Response:
    """A PostgreSQL that is down or restarting is a 503; a full disk, contention and bugs are told apart as usual."""
    down = isinstance(err.orig, psycopg.OperationalError) or err.connection_invalidated
    if down and not is_storage_full(err, _storage_root()):
        return _render_backend_unavailable(err)
    return _render_unexpected(err)


def _render_unexpected(err: Exception) -> Response:
    """The last resort: a full disk (507) and a busy database (503) are told apart from bugs (500)."""
    if is_storage_full(err, _storage_root()):
        return _render_insufficient_storage(err)
    if is_contention(err):
        return _render_backend_unavailable(err)
    log.exception("Unhandled error: %s", type(err).__name__)
    return error_response(500, ErrorCode.INTERNAL_ERROR, "internal server error")


def _guarded_events(body: Iterable[Any], root: Path | None) -> Iterator[Any]:
    """An event stream that ends with an ``error`` event carrying the JSON error when storage fails.

    Its status line is long gone by then, so the failure travels as the stream's last event
    (EventSource hands it to ``onerror``: the page backs off and polls). A bug still raises.
    """
    try:
        yield from body
    except Exception as err:
        if is_storage_full(err, root):
            status, code, message = 507, ErrorCode.INSUFFICIENT_STORAGE, STORAGE_FULL_MESSAGE
        elif is_contention(err):
            status, code, message = 503, ErrorCode.SERVICE_UNAVAILABLE, "state backend unavailable; retry later"
        else:
            raise
        log.error("Event stream ended with %d: %s: %s", status, type(err).__name__, err)
        yield f"event: error\ndata: {json.dumps(error_body(code, message, status=status))}\n\n"


def _guard_event_streams(response: Response) -> Response:
    if response.is_streamed and response.mimetype == EVENT_STREAM:
        response.response = _guarded_events(response.response, _storage_root())
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _render_http_error)
    # Redis holds only rate-limit counters now; an unreachable one is still a retryable 503.
    app.register_error_handler(RedisConnectionError, _render_backend_unavailable)
    app.register_error_handler(RedisTimeoutError, _render_backend_unavailable)
    app.register_error_handler(sa_exc.OperationalError, _render_database_error)
    app.register_error_handler(sa_exc.InterfaceError, _render_database_error)
    app.register_error_handler(sa_exc.TimeoutError, _render_backend_unavailable)  # every pooled connection busy
    app.register_error_handler(StoreUnavailable, _render_store_unavailable)
    app.register_error_handler(Exception, _render_unexpected)
    app.after_request(_guard_event_streams)
