"""Schemathesis hooks for the live run: a positive chunk PUT carries the bytes the upload expects.

Random bodies never have the exact length a chunk must have, so without this
every generated chunk is refused and finalize, verification and download are
only ever tested on incomplete uploads. For a *positive* case on a real upload
(the stateful phase follows the document's links from init) the hook asks the
server which chunk is missing and how long it must be, and sends that many
bytes with matching checksum headers. Negative cases keep their generated
garbage. A download of an upload still finalizing waits (up to ``FINALIZE_WAIT``)
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

from core.checksums import ChunkChecksum
from core.protocol import (
    AUTH_SCHEME,
    CHUNK_CHECKSUM_HEADERS,
    CHUNK_PATH,
    DOWNLOAD_PATH,
    HEADER_AUTHORIZATION,
    HEADER_CONTENT_MD5,
    KiB,
    UploadState,
    chunk_length,
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
FINALIZE_WAIT = 30.0  # seconds; a finalize of a fitted upload (at most a few MiB) takes well under one
_log_lock = threading.Lock()


def _is_positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return getattr(mode, "value", mode) == "positive"


def _upload_status(base_url: str, upload_id: str) -> dict[str, Any] | None:
    headers = {HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {os.environ[KEY_VARIABLE]}"}
    reply = requests.get(upload_status_url(base_url, upload_id), headers=headers, timeout=10)
    return reply.json() if reply.status_code == 200 else None


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
    """Fit positive chunk PUTs to their upload; let a download of an upload being finalized find it stored."""
    method, operation = case.method.upper(), case.operation.path
    chunk = method == "PUT" and operation == CHUNK_OPERATION and _is_positive(case)
    download = method == "GET" and operation == DOWNLOAD_OPERATION
    if not (chunk or download):
        return
    base_url = (kwargs.get("base_url") or case.operation.base_url or "").rstrip("/")
    upload_id = str((case.path_parameters or {}).get("upload_id", ""))
    if not base_url or not upload_id:
        return
    if download:
        _wait_for_finalize(base_url, upload_id)
        return
    status = _upload_status(base_url, upload_id)
    if status is not None and status.get("state") == UploadState.UPLOADING.value:
        _fit_chunk(case, status)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One line per reply: ``METHOD /openapi/path STATUS``."""
    path = os.environ.get(STATUS_LOG_VARIABLE)
    if path:
        with _log_lock, open(path, "a", encoding="utf-8") as log:
            log.write(f"{case.method.upper()} {case.operation.path} {response.status_code}\n")
