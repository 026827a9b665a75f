"""The upload server as an older release answers: no FEATURE_FINALIZE_SHA256, no fingerprint, finalize bodies ignored.

Nor FEATURE_CHUNK_CRC32C: the older release would store a chunk that carries only X-Chunk-CRC32C
unchecked; this stand-in refuses such a chunk with a 400, so a test sees a client that sent one.

``gunicorn ... tests.helpers.older_server:app`` (``OlderGunicornServer``): the real server with a WSGI
layer that removes what the older release did not have, so a new client can be tested against it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

from core.protocol import (
    FEATURE_CHUNK_CRC32C,
    FEATURE_FINALIZE_SHA256,
    HEADER_CHUNK_CRC32C,
    HEADER_PIECE_CRC32C,
    HEALTH_PATH,
    INIT_PATH,
)
from core.server.app import create_app
from core.server.errors import error_body
from tests.helpers.wsgi_replies import StartResponse, WSGIApp, rewritten_reply, without_features

NEW_INIT_FIELDS = ("fingerprint",)
NEW_REPLY_FIELDS = ("features", "dedup_candidate")
NEW_FEATURES = (FEATURE_FINALIZE_SHA256, FEATURE_CHUNK_CRC32C)
NEW_HEADERS = tuple("HTTP_" + name.upper().replace("-", "_") for name in (HEADER_CHUNK_CRC32C, HEADER_PIECE_CRC32C))


def _replace_body(environ: dict[str, Any], body: bytes) -> None:
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def _older_reply(path: str, body: bytes) -> bytes:
    if path == HEALTH_PATH:
        return without_features(body, NEW_FEATURES)
    doc = json.loads(body)
    for name in NEW_REPLY_FIELDS:
        doc.pop(name, None)
    return json.dumps(doc).encode()


class OlderRelease:
    """WSGI middleware: the request and reply changes listed in the module docstring."""

    def __init__(self, wsgi: WSGIApp) -> None:
        self.wsgi = wsgi

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if method == "PUT" and any(name in environ for name in NEW_HEADERS):
            body = json.dumps(error_body("older_release", "this test stand-in refuses X-Chunk-CRC32C")).encode()
            start_response(
                "400 BAD REQUEST", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        if method == "POST" and path.endswith("/finalize"):
            _replace_body(environ, b"")
        if method == "POST" and path == INIT_PATH:
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            try:
                doc = json.loads(raw)
                for name in NEW_INIT_FIELDS:
                    doc.pop(name, None)
                raw = json.dumps(doc).encode()
            except (ValueError, AttributeError):
                pass  # the server answers a bad body itself
            _replace_body(environ, raw)
        if path not in (HEALTH_PATH, INIT_PATH):
            return self.wsgi(environ, start_response)
        return rewritten_reply(self.wsgi, environ, start_response, lambda reply: _older_reply(path, reply))


app = create_app()
app.wsgi_app = OlderRelease(app.wsgi_app)  # type: ignore[method-assign]
