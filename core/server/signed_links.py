"""Short-lived signed download links: what a browser tool such as Foxglove fetches without an API key.

A link names one stored file and an expiry, and carries an HMAC-SHA256 over both
made with the server's secret (SECRET_KEY, the one that signs dashboard sessions),
so it can be shared for SIGNED_URL_TTL seconds and grants nothing else. The file
answers ``Range`` requests (206, ``Accept-Ranges``, ``ETag``) when it is stored
raw, so an MCAP reader fetching over HTTP can seek to the summary; origins in
DOWNLOAD_CORS_ORIGINS may read it cross-origin.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from core.config import ServerConfig
from core.protocol import (
    BAG_LINKS_PATH,
    PARAM_EXPIRES,
    PARAM_SIGNATURE,
    SIGNED_DOWNLOAD_PATH,
)
from core.server import auth, bags_api, limits
from core.server.errors import Forbidden
from core.server.identity import ANONYMOUS, Identity, current_identity
from core.server.ranges import file_response

log = logging.getLogger("upload_server")

_PURPOSE = b"signed-download\n"  # domain separation: a session signature is never a valid link


def signature(secret: str, upload_id: str, expires: int) -> str:
    message = _PURPOSE + f"{upload_id}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_path(secret: str, upload_id: str, expires: int) -> str:
    query = urlencode({PARAM_EXPIRES: expires, PARAM_SIGNATURE: signature(secret, upload_id, expires)})
    return SIGNED_DOWNLOAD_PATH.replace("<upload_id>", quote(upload_id, safe="")) + "?" + query


def check(secret: str, upload_id: str, expires_raw: str | None, sent: str | None, now: float) -> None:
    """Refuse (403) a link that is malformed, forged, or past its expiry."""
    try:
        expires = int(expires_raw or "")
    except ValueError:
        expires = -1
    # Bytes: compare_digest refuses non-ASCII str, and a link is whatever a browser sends.
    expected = signature(secret, upload_id, expires).encode()
    valid = expires >= 0 and hmac.compare_digest(expected, (sent or "").encode())
    if not valid:
        msg = "this download link is not valid: ask for a new one"
        raise Forbidden(msg)
    if now > expires:
        msg = "this download link has expired: ask for a new one"
        raise Forbidden(msg)


def _config() -> ServerConfig:
    config: ServerConfig = current_app.extensions["server_config"]
    return config


def bag_links(identity: Identity, bag_id: str, now: float) -> dict[str, Any]:
    """Signed links to every file of a bag the caller may see, and a Foxglove link for each MCAP file."""
    config = _config()
    bag = bags_api.bag_service().get(identity, bag_id)
    expires = int(now + config.signed_url_ttl)
    root = request.host_url.rstrip("/")
    files = []
    for facts in bag.files:
        url = root + signed_path(str(current_app.secret_key), facts.upload_id, expires)
        entry: dict[str, Any] = {"upload_id": facts.upload_id, "filename": facts.filename, "url": url}
        if facts.filename.endswith(".mcap"):
            entry["foxglove"] = config.foxglove_url + "?" + urlencode({"ds": "remote-file", "ds.url": url})
        files.append(entry)
    log.info("Signed links for bag %s (%s) by %s, valid until %d", bag_id, bag.name, identity.name, expires)
    return {"success": True, "bag_id": bag_id, "expires": expires, "files": files}


links_api = Blueprint("signed_links", __name__)


@links_api.post(BAG_LINKS_PATH)
def create_links(bag_id: str) -> tuple[Response, int]:
    return jsonify(bag_links(current_identity(), bag_id, time.time())), 200


# No rate limit: a viewer seeking through an MCAP sends many Range requests; a forged link costs one HMAC.
@limits.exempt
@auth.public
def signed_download(upload_id: str) -> Response:
    args = request.args
    check(str(current_app.secret_key), upload_id, args.get(PARAM_EXPIRES), args.get(PARAM_SIGNATURE), time.time())
    # The signature is the authority here: it was made for whoever could see this upload.
    return file_response(bags_api.bag_service().uploads.download(ANONYMOUS, upload_id, raw=False))


def _download_cors(response: Response) -> Response:
    """Let the configured origins (Foxglove) read signed downloads, Range replies included."""
    if request.url_rule is None or request.url_rule.rule != SIGNED_DOWNLOAD_PATH:
        return response
    allowed = set(_config().download_cors_origins)
    origin = request.headers.get("Origin")
    if origin and (origin in allowed or "*" in allowed):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.headers["Access-Control-Expose-Headers"] = "Accept-Ranges, Content-Range, Content-Length, ETag"
        response.headers["Access-Control-Allow-Headers"] = "Range, If-Range"
        response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        response.vary.add("Origin")
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(links_api)
    app.add_url_rule(SIGNED_DOWNLOAD_PATH, "signed_download", signed_download, methods=["GET"])
    app.after_request(_download_cors)
