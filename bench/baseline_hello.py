"""The baseline for ``bench.protection_overhead``: a hello-world Flask app, nothing but the routes' JSON.

It answers the two routes the benchmark polls with replies shaped like the real
server's (``GET /health``, ``GET /upload/<id>``): no key check, no rate limits,
no metrics, no security headers, no state lookup. Served by the same gunicorn settings.
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask, Response, jsonify

from core.protocol import HEALTH_PATH, UPLOAD_PATH

app = Flask(__name__)


@app.get(HEALTH_PATH)
def health() -> Response:
    return jsonify({"status": "ok", "timestamp": datetime.now(timezone.utc).isoformat()})


@app.get(UPLOAD_PATH)
def status(upload_id: str) -> Response:
    return jsonify({"success": True, "upload_id": upload_id, "state": "uploading", "received_chunks": []})
