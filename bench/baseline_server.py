"""The baseline for ``bench.server_throughput``: a minimal Flask app that only writes chunks, checked, with fsync.

Same wire format as the real server (init, then ``PUT /upload/<id>/chunk/<index>``
with ``X-Chunk-CRC32C`` or ``X-Chunk-SHA256``), none of its bookkeeping: no state
store, no locks, no ownership, no finalize. Served by the same gunicorn settings.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from flask import Flask, Response, abort, jsonify, request

from core.checksums import chunk_hasher
from core.protocol import CHUNK_PATH, HEADER_CHUNK_CRC32C, HEADER_CHUNK_SHA256, INIT_PATH, ChunkAlgorithm

# 64 KiB pieces, as measured in ../shared NOTES.md; BASELINE_READ_SIZE lets a run give it ours (256 KiB).
READ_SIZE = int(os.environ.get("BASELINE_READ_SIZE", 64 * 1024))
ROOT = Path(os.environ.get("UPLOAD_DIR", "bench/out/baseline"))
ROOT.mkdir(parents=True, exist_ok=True)

app = Flask(__name__)


@app.post(INIT_PATH)
def init() -> tuple[Response, int]:
    body = request.get_json(force=True)
    chunk_size = int(body["chunk_size"])
    # The chunk size rides in the id, so a chunk request needs no lookup at all.
    upload_id = f"{uuid.uuid4().hex}-{chunk_size}"
    with (ROOT / upload_id).open("wb") as fh:
        fh.truncate(int(body["filesize"]))
    return jsonify({"success": True, "upload_id": upload_id, "chunk_size": chunk_size}), 201


@app.put(CHUNK_PATH)
def chunk(upload_id: str, index: int) -> tuple[Response, int]:
    offset = index * int(upload_id.rsplit("-", 1)[1])
    crc = request.headers.get(HEADER_CHUNK_CRC32C)
    digest = chunk_hasher(ChunkAlgorithm.SHA256 if crc is None else ChunkAlgorithm.CRC32C)
    fd = os.open(ROOT / upload_id, os.O_WRONLY)
    try:
        while piece := request.stream.read(READ_SIZE):
            digest.update(piece)
            offset += os.pwrite(fd, piece, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    if digest.hexdigest() != (crc or request.headers.get(HEADER_CHUNK_SHA256, "")).lower():
        abort(400)
    return jsonify({"success": True, "index": index}), 201
