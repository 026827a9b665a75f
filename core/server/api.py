"""HTTP routes of the upload protocol: translate requests into ``UploadService`` calls and results into JSON."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, request

import core
from core.checksums import ChunkChecksum
from core.protocol import (
    CHUNK_PATH,
    DOWNLOAD_PATH,
    FEATURE_CHUNK_CRC32C,
    FEATURE_CHUNK_PIECES,
    FEATURE_FINALIZE_SHA256,
    FINALIZE_PATH,
    HEADER_CONTENT_MD5,
    HEALTH_PATH,
    INIT_PATH,
    PARAM_CLIENT,
    PARAM_LIMIT,
    PARAM_OFFSET,
    PARAM_RAW,
    PARAM_STATE,
    UPLOAD_PATH,
    UPLOADS_PATH,
    Codec,
    ErrorCode,
    UploadState,
)
from core.server.errors import InvalidJson
from core.server.identity import current_identity
from core.server.ranges import file_response
from core.server.service import ChunkResult, InitResult, PieceResult, UploadService
from core.server.validation import (
    MAX_PAGE_OFFSET,
    MAX_PAGE_SIZE,
    chunk_checksum_header,
    content_md5_header,
    page_param,
    parse_finalize,
    parse_init,
    piece_headers,
    state_param,
)

FEATURES = (
    "chunked-upload",
    "compression",
    "rate-limiting",
    "ssl-support",
    "resumable",
    "parallel-chunks",
    "checksums",
    "deduplication",
    FEATURE_CHUNK_PIECES,
    FEATURE_FINALIZE_SHA256,
    FEATURE_CHUNK_CRC32C,
)

api = Blueprint("upload_api", __name__)


def _service() -> UploadService:
    service: UploadService = current_app.extensions["upload_service"]
    return service


def _ok(status: int = 200, **fields: Any) -> tuple[Response, int]:
    return jsonify({"success": True, **fields}), status


def _features() -> list[str]:
    """Chunk pieces only where the blob store can hold a partial chunk (local disk, not S3)."""
    pieces = _service().blobs.supports_pieces
    return [feature for feature in FEATURES if feature != FEATURE_CHUNK_PIECES or pieces]


@api.get(HEALTH_PATH)
def health() -> tuple[Response, int]:
    return jsonify(
        {
            "status": "ok",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "version": core.__version__,
            "features": _features(),
        }
    ), 200


def _init_reply(result: InitResult) -> dict[str, Any]:
    record = result.record
    status = _service().describe(record)
    return {
        "upload_id": record.upload_id,
        "compression_enabled": record.compression is not Codec.NONE,
        "compression": record.compression.value,
        "chunk_size": record.chunk_size,
        "chunks": record.chunks,
        "received": status["received"],
        "state": record.state.value,
        "deduplicated": record.deduplicated,
        "resumed": result.resumed,
        "verified": record.verified,
        "dedup_candidate": result.dedup_candidate,
        "features": _features(),
    }


@api.post(INIT_PATH)
def init_upload() -> tuple[Response, int]:
    # force=True: curl users often omit the Content-Type; the body must still be JSON.
    body = request.get_json(force=True, silent=True)
    if body is None:
        msg = "the body must be a JSON object"
        raise InvalidJson(msg)
    spec = parse_init(body, _service().config)
    result = _service().init_upload(current_identity(), spec)
    return _ok(200 if result.resumed else 201, **_init_reply(result))


def _body_length() -> int | None:
    """Content-Length; a request with neither it nor chunked encoding has an empty body (RFC 9112 6.3)."""
    if request.content_length is not None:
        return request.content_length
    return None if "chunked" in request.headers.get("Transfer-Encoding", "").lower() else 0


@api.put(CHUNK_PATH)
def put_chunk(upload_id: str, index: int) -> tuple[Response, int]:
    piece = piece_headers(request.headers)
    if piece is not None:
        return _put_piece(upload_id, index, *piece)
    checksum = chunk_checksum_header(request.headers)
    md5 = content_md5_header(request.headers.get(HEADER_CONTENT_MD5))
    result = _service().put_chunk(
        current_identity(),
        upload_id,
        index,
        request.stream,
        content_length=_body_length(),
        checksum=checksum,
        md5=md5,
    )
    return _chunk_reply(result, upload_id, index)


def _chunk_reply(result: ChunkResult | PieceResult, upload_id: str, index: int, **extra: Any) -> tuple[Response, int]:
    """201 for a chunk (or piece) stored now, 200 for one the server already had."""
    return _ok(
        200 if result.duplicate else 201,
        upload_id=upload_id,
        index=index,
        received_count=result.received,
        chunks=result.record.chunks,
        duplicate=result.duplicate,
        **extra,
    )


def _put_piece(
    upload_id: str, index: int, offset: int, piece_checksum: ChunkChecksum, chunk_checksum: ChunkChecksum
) -> tuple[Response, int]:
    result = _service().put_piece(
        current_identity(),
        upload_id,
        index,
        request.stream,
        content_length=_body_length(),
        offset=offset,
        piece_checksum=piece_checksum,
        chunk_checksum=chunk_checksum,
    )
    return _chunk_reply(
        result,
        upload_id,
        index,
        chunk_offset=result.offset,
        piece_length=result.length,
        chunk_complete=result.complete,
    )


@api.get(UPLOAD_PATH)
def upload_status(upload_id: str) -> tuple[Response, int]:
    status = _service().status(current_identity(), upload_id)
    if status["state"] != UploadState.ABORTED.value:
        return _ok(**status)
    # Gone: an aborted upload takes nothing more. The reply still carries its status document (and
    # the listing keeps it), so a robot resuming from its journal learns why and starts a new upload.
    error = status["error"] or {"code": ErrorCode.UPLOAD_ABORTED.value, "message": "the upload was aborted"}
    return jsonify({**status, "success": False, "error": error}), 410


@api.post(FINALIZE_PATH)
def finalize(upload_id: str) -> tuple[Response, int]:
    # The seed's finalize has no body; a client that hashed while sending declares its sha256 here.
    raw = request.get_data(cache=True)
    body = request.get_json(force=True, silent=True) if raw else None
    if raw and body is None:
        msg = "the body must be empty or a JSON object"
        raise InvalidJson(msg)
    sha256 = parse_finalize(body)
    status, accepted = _service().finalize(current_identity(), upload_id, sha256=sha256)
    return _ok(202 if accepted else 200, **status)


@api.delete(UPLOAD_PATH)
def abort(upload_id: str) -> tuple[Response, int]:
    return _ok(**_service().abort(current_identity(), upload_id))


@api.get(UPLOADS_PATH)
def list_uploads() -> tuple[Response, int]:
    page = _service().list_uploads(
        current_identity(),
        state=state_param(request.args.get(PARAM_STATE)),
        client=request.args.get(PARAM_CLIENT) or None,
        limit=page_param(request.args, PARAM_LIMIT, 50, MAX_PAGE_SIZE),
        offset=page_param(request.args, PARAM_OFFSET, 0, MAX_PAGE_OFFSET),
    )
    return _ok(**page)


def _attachment(filename: str) -> str:
    fallback = filename.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@api.delete(DOWNLOAD_PATH)
def delete_stored(upload_id: str) -> tuple[Response, int]:
    """Admins only: delete a complete upload's stored file to free space; audited in the log."""
    deletion = _service().delete_stored(current_identity(), upload_id)
    return _ok(
        **_service().describe(deletion.record, detailed=False),
        bytes_freed=deletion.bytes_freed,
        shared_with=deletion.shared_with,
    )


@api.get(DOWNLOAD_PATH)
def download(upload_id: str) -> Response:
    raw = request.args.get(PARAM_RAW, "0").lower() in {"1", "true", "yes"}
    stored = _service().download(current_identity(), upload_id, raw=raw)
    return file_response(stored, {"Content-Disposition": _attachment(stored.filename)})
