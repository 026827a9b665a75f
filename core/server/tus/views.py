"""HTTP routes of tus 1.0.0 under /files/: headers in, ``TusService`` calls, headers out."""

from __future__ import annotations

from email.utils import formatdate

from flask import Blueprint, Flask, Response, current_app, request

from core.server.errors import UnsupportedMediaType
from core.server.identity import current_identity
from core.server.tus import headers
from core.server.tus.hashing import StreamHashes
from core.server.tus.protocol import (
    CHECKSUM_ALGORITHMS,
    CONCAT_FINAL,
    DEFER_LENGTH,
    EXT_CHECKSUM,
    EXT_CONCATENATION,
    EXT_CREATION,
    EXT_CREATION_DEFER_LENGTH,
    EXT_CREATION_WITH_UPLOAD,
    EXT_EXPIRATION,
    EXT_TERMINATION,
    HEADER_CACHE_CONTROL,
    HEADER_LOCATION,
    HEADER_TUS_CHECKSUM_ALGORITHM,
    HEADER_TUS_EXTENSION,
    HEADER_TUS_MAX_SIZE,
    HEADER_TUS_RESUMABLE,
    HEADER_TUS_VERSION,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_UPLOAD_CONCAT,
    HEADER_UPLOAD_DEFER_LENGTH,
    HEADER_UPLOAD_EXPIRES,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_OFFSET,
    OFFSET_CONTENT_TYPE,
    TUS_COLLECTION_PATH,
    TUS_PREFIX,
    TUS_UPLOAD_PATH,
    TUS_VERSION,
)
from core.server.tus.service import TusService, TusUpload
from core.server.tus.store import TusStore

EXTENSION = "tus_service"

tus = Blueprint("tus", __name__)


def _service() -> TusService:
    service: TusService = current_app.extensions[EXTENSION]
    return service


def extensions(service: TusService) -> list[str]:
    """What this server implements, for Tus-Extension: concatenation only where partial uploads can be read back."""
    names = [
        EXT_CREATION,
        EXT_CREATION_WITH_UPLOAD,
        EXT_CREATION_DEFER_LENGTH,
        EXT_TERMINATION,
        EXT_CHECKSUM,
        EXT_EXPIRATION,
    ]
    return [*names, EXT_CONCATENATION] if service.concatenation else names


@tus.before_request
def _check_version() -> None:
    if request.method != "OPTIONS":
        headers.check_version(request.headers.get(HEADER_TUS_RESUMABLE))


@tus.after_request
def _tus_headers(response: Response) -> Response:
    response.headers[HEADER_TUS_RESUMABLE] = TUS_VERSION
    if request.method == "OPTIONS":
        service = _service()
        response.headers[HEADER_TUS_VERSION] = TUS_VERSION
        response.headers[HEADER_TUS_EXTENSION] = ",".join(extensions(service))
        response.headers[HEADER_TUS_MAX_SIZE] = str(service.uploads.config.max_file_size)
        response.headers[HEADER_TUS_CHECKSUM_ALGORITHM] = ",".join(CHECKSUM_ALGORITHMS)
    return response


def _body_length() -> int | None:
    """Content-Length; None for a chunked body (Node's http sends a Buffer so); 0 when there is no body."""
    if request.content_length is not None:
        return request.content_length
    return None if "chunked" in request.headers.get("Transfer-Encoding", "").lower() else 0


def _require_offset_body() -> None:
    if request.mimetype != OFFSET_CONTENT_TYPE:
        msg = f"Content-Type must be {OFFSET_CONTENT_TYPE}"
        raise UnsupportedMediaType(msg)


def _expires(upload: TusUpload) -> dict[str, str]:
    when = _service().expires_at(upload)
    return {} if when is None else {HEADER_UPLOAD_EXPIRES: formatdate(when, usegmt=True)}


def _location(upload_id: str) -> str:
    """Relative (RFC 9110 10.2.2): right behind any proxy, whatever Host and port it forwards."""
    return f"{request.script_root}{TUS_PREFIX}/{upload_id}"


def _empty(status: int, fields: dict[str, str]) -> Response:
    response = current_app.response_class(status=status)
    response.headers.update(fields)
    return response


@tus.post(TUS_COLLECTION_PATH)
def create() -> Response:
    concat = headers.concat(request.headers.get(HEADER_UPLOAD_CONCAT))
    final = concat is not None and concat.kind == CONCAT_FINAL
    deferred = headers.defer_length(request.headers.get(HEADER_UPLOAD_DEFER_LENGTH), request.headers, final=final)
    length = (
        None
        if final or deferred
        else headers.byte_count(request.headers.get(HEADER_UPLOAD_LENGTH), HEADER_UPLOAD_LENGTH)
    )
    raw_meta = request.headers.get(HEADER_UPLOAD_METADATA, "")
    meta = headers.metadata(raw_meta)
    body_length = _body_length()
    if body_length != 0:
        _require_offset_body()
    checksum = headers.checksum(request.headers.get(HEADER_UPLOAD_CHECKSUM)) if body_length != 0 else None
    service, identity = _service(), current_identity()
    upload = service.create(identity, length, meta, raw_meta, concat)
    if body_length != 0 and not final:  # creation-with-upload
        upload = service.patch(
            identity, upload.record.upload_id, request.stream, offset=0, content_length=body_length, checksum=checksum
        )
    fields = {HEADER_LOCATION: _location(upload.record.upload_id), **_expires(upload)}
    if body_length != 0 or upload.tus.upload_offset:
        fields[HEADER_UPLOAD_OFFSET] = str(upload.tus.upload_offset)
    return _empty(201, fields)


@tus.route(TUS_UPLOAD_PATH, methods=["HEAD"])
def head(upload_id: str) -> Response:
    upload = _service().get(current_identity(), upload_id)
    fields = {
        HEADER_UPLOAD_OFFSET: str(upload.tus.upload_offset),
        HEADER_CACHE_CONTROL: "no-store",
        **_expires(upload),
    }
    if upload.length is None:
        fields[HEADER_UPLOAD_DEFER_LENGTH] = DEFER_LENGTH
    else:
        fields[HEADER_UPLOAD_LENGTH] = str(upload.length)
    if upload.tus.raw_metadata:
        fields[HEADER_UPLOAD_METADATA] = upload.tus.raw_metadata
    if upload.tus.concat == CONCAT_FINAL:
        fields[HEADER_UPLOAD_CONCAT] = CONCAT_FINAL + ";" + " ".join(f"{TUS_PREFIX}/{p}" for p in upload.tus.parts)
    elif upload.tus.concat:
        fields[HEADER_UPLOAD_CONCAT] = upload.tus.concat
    return _empty(200, fields)


@tus.route(TUS_UPLOAD_PATH, methods=["PATCH"])
def patch(upload_id: str) -> Response:
    _require_offset_body()
    offset = headers.byte_count(request.headers.get(HEADER_UPLOAD_OFFSET), HEADER_UPLOAD_OFFSET)
    assert offset is not None  # noqa: S101 - required
    checksum = headers.checksum(request.headers.get(HEADER_UPLOAD_CHECKSUM))
    declared = headers.byte_count(request.headers.get(HEADER_UPLOAD_LENGTH), HEADER_UPLOAD_LENGTH, required=False)
    upload = _service().patch(
        current_identity(),
        upload_id,
        request.stream,
        offset=offset,
        content_length=_body_length(),
        checksum=checksum,
        declared_length=declared,
    )
    return _empty(204, {HEADER_UPLOAD_OFFSET: str(upload.tus.upload_offset), **_expires(upload)})


@tus.delete(TUS_UPLOAD_PATH)
def terminate(upload_id: str) -> Response:
    _service().terminate(current_identity(), upload_id)
    return _empty(204, {})


def init_app(app: Flask) -> TusService:
    """Serve tus on the app's upload service and state database."""
    service = TusService(
        app.extensions["upload_service"], TusStore(app.extensions["state_store"].engine), StreamHashes()
    )
    app.extensions[EXTENSION] = service
    service.uploads.pruners.append(service.store.prune_joined)  # joined partial uploads go with each sweep
    app.register_blueprint(tus)
    return service
