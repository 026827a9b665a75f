"""API errors: every failure the server reports carries an HTTP status and a protocol ``ErrorCode``.

The classes subclass werkzeug's ``HTTPException`` (not Flask) so the upload
service can raise them without knowing about requests, and one handler
(``register_error_handlers``) renders them, werkzeug's own 404/405/413 and any
unexpected exception as the same JSON document.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from flask import Flask, Response, jsonify
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException

from core.protocol import HEADER_CONTENT_RANGE, HEADER_RETRY_AFTER, ErrorCode
from core.server.blobs.base import StoreUnavailable

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


def _render_sqlite_error(err: sqlite3.OperationalError) -> Response:
    # "database is locked" after the busy timeout is contention, retryable; anything else is a bug.
    if "locked" in str(err) or "busy" in str(err):
        return _render_backend_unavailable(err)
    return _render_unexpected(err)


def _render_unexpected(err: Exception) -> Response:
    log.exception("Unhandled error: %s", type(err).__name__)
    return error_response(500, ErrorCode.INTERNAL_ERROR, "internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_error_handler(RedisConnectionError, _render_backend_unavailable)
    app.register_error_handler(RedisTimeoutError, _render_backend_unavailable)
    app.register_error_handler(sqlite3.OperationalError, _render_sqlite_error)
    app.register_error_handler(StoreUnavailable, _render_store_unavailable)
    app.register_error_handler(Exception, _render_unexpected)
