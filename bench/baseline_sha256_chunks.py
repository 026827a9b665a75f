"""The baseline for ``bench.chunk_checksum``: the project's server, minus ``chunk-crc32c`` in its features.

Everything else is the current server (finalize-sha256, fingerprints), so the robot client reads
each bag once either way and the only difference is the chunk check it is told to send:
``X-Chunk-SHA256`` here, ``X-Chunk-CRC32C`` to the server as shipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.protocol import FEATURE_CHUNK_CRC32C, HEALTH_PATH, INIT_PATH
from core.server.app import create_app
from tests.helpers.wsgi_replies import StartResponse, WSGIApp, rewritten_reply, without_features

REMOVED = frozenset({FEATURE_CHUNK_CRC32C})


def _middleware(wsgi: WSGIApp) -> WSGIApp:
    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in (HEALTH_PATH, INIT_PATH):
            return wsgi(environ, start_response)
        return rewritten_reply(wsgi, environ, start_response, lambda body: without_features(body, REMOVED))

    return serve


app = create_app()
app.wsgi_app = _middleware(app.wsgi_app)  # type: ignore[method-assign]
