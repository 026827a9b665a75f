"""Schemathesis hooks for the live run: a positive chunk PUT carries the bytes the upload expects.

Random bodies never have the exact length a chunk must have, so without this
every generated chunk is refused and finalize, verification and download are
only ever tested on incomplete uploads. For a *positive* case on a real upload
(the stateful phase follows the document's links from init) the hook asks the
server which chunk is missing and how long it must be, and sends that many
bytes with matching checksum headers. The bytes are zeros, so a positive
init of a small file declares the whole-file digests of zeros, and a positive
finalize of a small upload first sends the chunks it still lacks: otherwise a
random walk reached a complete, verifiable upload so rarely that on a loaded
machine a 60 s run sometimes never downloaded one. Negative cases keep their
generated garbage. A download of an upload still finalizing waits (up to ``FINALIZE_WAIT``)
for its verification: the link from finalize's 202 is followed at once, and on a
loaded machine the background finalize had not stored the file yet, so the run's
download of a verified copy depended on the machine's speed. ``after_call``
tallies every reply by operation and status in the file named by
``SCHEMATHESIS_STATUS_LOG``, so the test can check how deep the run got. tus
bodies (``application/offset+octet-stream``) are sent as raw bytes, like
``application/octet-stream``. Loaded by ``st run`` through ``SCHEMATHESIS_HOOKS``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from typing import Any

import requests
import schemathesis

from core.checksums import ChunkChecksum, sha256_hex
from core.protocol import (
    AUTH_SCHEME,
    CHUNK_CHECKSUM_HEADERS,
    CHUNK_PATH,
    DOWNLOAD_PATH,
    FINALIZE_PATH,
    HEADER_AUTHORIZATION,
    HEADER_CONTENT_MD5,
    INIT_PATH,
    KiB,
    MiB,
    UploadState,
    chunk_count,
    chunk_length,
    chunk_url,
    upload_status_url,
)
from core.server.openapi import openapi_path
from core.server.tus.protocol import OFFSET_CONTENT_TYPE

KEY_VARIABLE = "SCHEMATHESIS_UPLOAD_KEY"
STATUS_LOG_VARIABLE = "SCHEMATHESIS_STATUS_LOG"
# Larger expected chunks stay random: generating them would slow the run down for no new code path.
MAX_FITTED_CHUNK = 256 * KiB
CHUNK_OPERATION = openapi_path(CHUNK_PATH)
DOWNLOAD_OPERATION = openapi_path(DOWNLOAD_PATH)
FINALIZE_OPERATION = openapi_path(FINALIZE_PATH)
INIT_OPERATION = openapi_path(INIT_PATH)
# Uploads up to this size get their digests declared and their missing chunks sent before finalize.
MAX_FITTED_UPLOAD = 4 * MiB
MAX_FILLED_CHUNKS = 64  # a generated chunk_size of a few bytes would otherwise mean a million PUTs
FINALIZE_WAIT = 30.0  # seconds; a finalize of a fitted upload (at most a few MiB) takes well under one
_log_lock = threading.Lock()


def _is_positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return getattr(mode, "value", mode) == "positive"


def _key_header() -> dict[str, str]:
    return {HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {os.environ[KEY_VARIABLE]}"}


def _upload_status(base_url: str, upload_id: str) -> dict[str, Any] | None:
    reply = requests.get(upload_status_url(base_url, upload_id), headers=_key_header(), timeout=10)
    return reply.json() if reply.status_code == 200 else None


def _fitted_size(value: Any) -> int | None:
    """The size of a file the hooks send in full: a small, known, non-negative integer, else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FITTED_UPLOAD
    return value if ok else None


def _fit_init(case: Any) -> None:
    body = case.body
    size = _fitted_size(body.get("filesize")) if isinstance(body, dict) else None
    if size is None:
        return
    zeros = bytes(size)
    if body.get("sha256"):
        body["sha256"] = sha256_hex(zeros)
    if body.get("checksum"):
        body["checksum"] = hashlib.md5(zeros, usedforsecurity=False).hexdigest()


def _complete_upload(base_url: str, upload_id: str, status: dict[str, Any]) -> int | None:
    """Send every chunk a small upload still lacks; its size, or None when it is not one the hooks fill."""
    size = _fitted_size(status.get("filesize"))
    chunk_size = int(status.get("chunk_size") or 0)
    if size is None or chunk_size <= 0 or chunk_count(size, chunk_size) > MAX_FILLED_CHUNKS:
        return None
    for index in status.get("missing") or []:
        body = bytes(chunk_length(size, chunk_size, int(index)))
        requests.put(chunk_url(base_url, upload_id, int(index)), data=body, headers=_key_header(), timeout=30)
    return size


def _fit_finalize(case: Any, base_url: str, upload_id: str, status: dict[str, Any]) -> None:
    size = _complete_upload(base_url, upload_id, status)
    if size is not None and isinstance(case.body, dict) and case.body.get("sha256"):
        case.body["sha256"] = sha256_hex(bytes(size))


def _fit_chunk(case: Any, status: dict[str, Any]) -> None:
    if status.get("filesize") is None:
        return  # a tus upload of deferred length: no chunk fits before its length is known
    missing = status.get("missing") or []
    # Nothing missing: resend chunk 0 unchanged (the idempotent "already stored" path).
    index = int(missing[0]) if missing else 0
    length = chunk_length(int(status["filesize"]), int(status["chunk_size"]), index)
    if length > MAX_FITTED_CHUNK:
        return
    body = bytes(length)
    case.path_parameters["index"] = index
    case.body = body
    # One chunk checksum: a request naming both is refused (docs/api.md), and this case is meant to be accepted.
    declared = [(a, header) for a, header in CHUNK_CHECKSUM_HEADERS.items() if header in case.headers]
    for _, header in declared[1:]:
        del case.headers[header]
    for algorithm, header in declared[:1]:
        case.headers[header] = ChunkChecksum.of(algorithm, (body,)).hexdigest
    if HEADER_CONTENT_MD5 in case.headers:
        case.headers[HEADER_CONTENT_MD5] = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324


@schemathesis.serializer(OFFSET_CONTENT_TYPE)
def offset_body(_context: Any, value: Any) -> bytes:
    """A tus PATCH body: raw bytes (generated binary strings, or any other value's text)."""
    if isinstance(value, bytes):
        return value
    data = getattr(value, "data", None)
    return data if isinstance(data, bytes) else str(value).encode()


def _wait_for_finalize(base_url: str, upload_id: str) -> None:
    deadline = time.monotonic() + FINALIZE_WAIT
    while time.monotonic() < deadline:
        status = _upload_status(base_url, upload_id)
        if status is None or status.get("state") != UploadState.FINALIZING.value:
            return
        time.sleep(0.1)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Fit positive inits, chunks and finalizes to the zeros sent; let a download find a finalizing upload stored."""
    method, operation = case.method.upper(), case.operation.path
    positive = _is_positive(case)
    if positive and method == "POST" and operation == INIT_OPERATION:
        _fit_init(case)
        return
    chunk = positive and method == "PUT" and operation == CHUNK_OPERATION
    finalize = positive and method == "POST" and operation == FINALIZE_OPERATION
    download = method == "GET" and operation == DOWNLOAD_OPERATION
    if not (chunk or finalize or download):
        return
    base_url = (kwargs.get("base_url") or case.operation.base_url or "").rstrip("/")
    upload_id = str((case.path_parameters or {}).get("upload_id", ""))
    if not base_url or not upload_id:
        return
    if download:
        _wait_for_finalize(base_url, upload_id)
        return
    status = _upload_status(base_url, upload_id)
    if status is None or status.get("state") != UploadState.UPLOADING.value:
        return
    if finalize:
        _fit_finalize(case, base_url, upload_id, status)
    else:
        _fit_chunk(case, status)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One line per reply: ``METHOD /openapi/path STATUS``."""
    path = os.environ.get(STATUS_LOG_VARIABLE)
    if path:
        with _log_lock, open(path, "a", encoding="utf-8") as log:
            log.write(f"{case.method.upper()} {case.operation.path} {response.status_code}\n")
