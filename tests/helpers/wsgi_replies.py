"""Rewrite a WSGI app's successful replies: how test and bench stand-ins play a server that lacks a feature."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def rewritten_reply(
    wsgi: WSGIApp, environ: dict[str, Any], start_response: StartResponse, rewrite: Callable[[bytes], bytes]
) -> Iterable[bytes]:
    """Call ``wsgi``; the body of a 2xx reply goes through ``rewrite``, with its Content-Length corrected."""
    captured: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured.update(status=status, headers=headers)
        return lambda _data: None

    reply = b"".join(wsgi(environ, capture))
    if captured["status"].startswith("2"):
        reply = rewrite(reply)
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    start_response(captured["status"], [*headers, ("Content-Length", str(len(reply)))])
    return [reply]


def without_features(body: bytes, features: Collection[str]) -> bytes:
    """A JSON reply (``GET /health``, an init reply) whose ``features`` list leaves these out."""
    doc = json.loads(body)
    doc["features"] = [f for f in doc.get("features", []) if f not in features]
    return json.dumps(doc).encode()
