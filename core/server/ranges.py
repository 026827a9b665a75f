"""Range replies for stored files: 206 with ``Content-Range``, ``Accept-Ranges`` and an ``ETag`` (RFC 9110).

An MCAP reader fetching over HTTP (Foxglove, ``mcap`` with a ranged reader) reads
the footer and summary first, then seeks: without ranges it would have to fetch
the whole file. Only a file stored raw can seek; a compressed one is sent whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from flask import Response, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from core.protocol import Codec
from core.server.service import Download

_PIECE = 1 << 20


def _byte_range(download: Download) -> tuple[int, int] | None:
    """The requested (start, stop), None for the whole file; only a raw stored file can seek."""
    if request.range is None or download.record.codec not in (None, Codec.NONE):
        return None
    found = request.range.range_for_length(download.size)
    if found is None:
        raise RequestedRangeNotSatisfiable(length=download.size)
    return found


def _read(path: Path, start: int, stop: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = stop - start
        while left > 0 and (piece := fh.read(min(_PIECE, left))):
            left -= len(piece)
            yield piece


def file_response(download: Download, extra_headers: Mapping[str, str] | None = None) -> Response:
    """The original bytes with ``ETag``; a 206 for a satisfiable ``Range`` when the file is stored raw."""
    etag = f'"{download.record.sha256}"'
    seekable = download.record.codec in (None, Codec.NONE)
    headers = {**(extra_headers or {}), "ETag": etag, "Accept-Ranges": "bytes" if seekable else "none"}
    wanted = _byte_range(download) if request.if_range.etag in (None, download.record.sha256) else None
    if wanted is None:
        headers["Content-Length"] = str(download.size)
        body: Iterator[bytes] = download.chunks()
        status = 200
    else:
        start, stop = wanted
        headers["Content-Length"] = str(stop - start)
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{download.size}"
        body = _read(download.path, start, stop)
        status = 206
    return Response(body, status=status, mimetype="application/octet-stream", headers=headers, direct_passthrough=True)
