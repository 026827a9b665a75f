"""HTTP hardening: security headers on every reply, CORS for configured origins only, body size limits per route.

Headers are set with ``setdefault`` so a view that knows better (the
dashboard's HTML pages and their CSP) keeps its own. CORS is off unless
``CORS_ORIGINS`` lists the dashboard's origin: robots are not browsers, and a
wildcard would let any web page drive an operator's signed-in browser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, current_app, request

from core.config import ServerConfig
from core.protocol import (
    CHUNK_PATH,
    HEADER_API_KEY,
    HEADER_AUTHORIZATION,
    HEADER_CHUNK_CRC32C,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_CONTENT_MD5,
    HEADER_PIECE_CRC32C,
    HEADER_PIECE_SHA256,
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    HEADER_REQUEST_ID,
    HEADER_RETRY_AFTER,
)
from core.server.errors import LengthRequired, PayloadTooLarge
from core.server.tus import protocol as tus
from core.server.validation import RequestJSONProvider

log = logging.getLogger("upload_server.security")

EXTENSION = "security"

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=63072000; includeSubDomains"

CORS_METHODS = ", ".join(["GET", "POST", "PUT", "DELETE", "OPTIONS", *tus.CORS_METHODS])
CORS_REQUEST_HEADERS = ", ".join(
    [
        HEADER_AUTHORIZATION,
        HEADER_API_KEY,
        "Content-Type",
        HEADER_CHUNK_SHA256,
        HEADER_CONTENT_MD5,
        HEADER_REQUEST_ID,
        HEADER_CHUNK_OFFSET,
        HEADER_PIECE_SHA256,
        HEADER_CHUNK_CRC32C,
        HEADER_PIECE_CRC32C,
        *tus.CORS_REQUEST_HEADERS,
    ]
)
CORS_EXPOSED_HEADERS = ", ".join(
    [
        HEADER_RETRY_AFTER,
        HEADER_REQUEST_ID,
        HEADER_RATELIMIT_LIMIT,
        HEADER_RATELIMIT_REMAINING,
        HEADER_RATELIMIT_RESET,
        *tus.CORS_EXPOSED_HEADERS,
    ]
)
CORS_MAX_AGE = "600"

# Routes whose body may exceed MAX_JSON_SIZE; everything else carries small JSON.
# A tus PATCH (or creation-with-upload) may carry the whole file: tus-js-client and Uppy send one body by default.
BODY_LIMITS: dict[str, Callable[[ServerConfig], int]] = {
    CHUNK_PATH: lambda c: c.max_chunk_size,
    tus.TUS_UPLOAD_PATH: lambda c: c.max_file_size,
    tus.TUS_COLLECTION_PATH: lambda c: c.max_file_size,
}
# Routes that stream their body to disk: the length is checked against the expected chunk size
# before a byte is stored, so a body of unknown length (chunked encoding) is refused outright.
LENGTH_REQUIRED_ROUTES = frozenset({CHUNK_PATH})
# Routes that stream a body of unknown length themselves (tus reads a chunked PATCH up to the
# upload's length): the limit is set, and the body is left for the view to read.
STREAMED_ROUTES = frozenset({tus.TUS_UPLOAD_PATH, tus.TUS_COLLECTION_PATH})


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _config() -> ServerConfig:
    config: ServerConfig = current_app.extensions[EXTENSION]
    return config


def _is_chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def _limit_body() -> None:
    """Refuse an oversized body before any byte of it is read, and cap what can be read.

    A body without Content-Length (chunked encoding) cannot be refused up
    front: a chunk is answered 411, and a small JSON body is read here, under
    the limit, so going over it is a clean 413 rather than a truncated
    document that a lenient parser might half-accept.
    """
    config = _config()
    url_rule = request.url_rule
    rule = url_rule.rule if url_rule is not None else None
    limit = BODY_LIMITS[rule](config) if rule in BODY_LIMITS else config.max_json_size
    request.max_content_length = limit
    if request.routing_exception is not None:
        # No route, no body to read: the 404/405 the router found is the answer, whatever the size.
        return
    length = request.content_length
    if length is not None:
        if length > limit:
            msg = f"request body of {length} bytes exceeds this route's limit of {limit} bytes"
            raise PayloadTooLarge(msg)
        return
    if not _is_chunked():
        return
    if rule in STREAMED_ROUTES:
        return
    if rule in LENGTH_REQUIRED_ROUTES:
        msg = f"Content-Length is required on this route (chunked bodies are refused; at most {limit} bytes)"
        raise LengthRequired(msg)
    # werkzeug stops reading silently at the maximum: one byte more tells "over the limit" from "exactly at it".
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True, parse_form_data=False)) > limit:
        msg = f"chunked request body exceeds this route's limit of {limit} bytes"
        raise PayloadTooLarge(msg)


def _answer_options() -> Response | None:
    """OPTIONS: 204 with ``Allow`` naming the methods of the route the path resolves to.

    Flask's automatic reply unions the methods of every rule the path matches, so
    ``/upload/init`` also advertised ``/upload/<upload_id>``'s GET and DELETE (the id
    ``init`` is never issued), and sent an empty ``text/html`` body. A CORS preflight gets
    the same reply, with the CORS headers added by ``_add_cors_headers``.
    """
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    # One path template may be several rules (GET and DELETE of /upload/<upload_id>): all of them.
    template = request.url_rule.rule
    methods = {"OPTIONS"}.union(*(r.methods or () for r in current_app.url_map.iter_rules() if r.rule == template))
    response = current_app.response_class(status=204)
    response.headers["Allow"] = ", ".join(sorted(methods))
    return response


def _add_security_headers(response: Response) -> Response:
    # One pass over the reply's header names, then appends: werkzeug's setdefault() costs ~15 µs a call,
    # which made these headers ~0.1 ms of every request (BENCHMARKS.md, protection).
    headers = response.headers
    present = {name.lower() for name in headers.keys()}  # noqa: SIM118 - Headers iterates (name, value) pairs
    mimetype = response.mimetype
    wanted = dict(SECURITY_HEADERS)
    wanted["Content-Security-Policy"] = HTML_CSP if mimetype == "text/html" else API_CSP
    if mimetype == "application/json":
        # Replies carry per-robot data behind a key: no shared cache may keep them.
        wanted["Cache-Control"] = "no-store"
    if request.is_secure:
        wanted["Strict-Transport-Security"] = HSTS
    for name, value in wanted.items():
        if name.lower() not in present:
            headers.add(name, value)
    return response


def _add_cors_headers(response: Response) -> Response:
    allowed = {normalize_origin(o) for o in _config().cors_origins}
    if not allowed:
        return response
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin or ("*" not in allowed and normalize_origin(origin) not in allowed):
        return response
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = CORS_METHODS
        headers["Access-Control-Allow-Headers"] = CORS_REQUEST_HEADERS
        headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    return response


def install_json_provider(app: Flask) -> None:
    """Parse request bodies with a depth limit (``RequestJSONProvider``), keeping the app's JSON settings."""
    provider = RequestJSONProvider(app)
    provider.sort_keys = app.json.sort_keys  # type: ignore[attr-defined]
    app.json = provider


def init_app(app: Flask, config: ServerConfig) -> None:
    app.extensions[EXTENSION] = config
    install_json_provider(app)
    app.before_request(_answer_options)
    app.before_request(_limit_body)
    app.after_request(_add_cors_headers)
    app.after_request(_add_security_headers)
    if "*" in config.cors_origins:
        log.warning("CORS_ORIGINS=*: any web page may call this API from a browser that holds a key")
    elif config.cors_origins:
        log.info("CORS allowed for %s", ", ".join(config.cors_origins))
