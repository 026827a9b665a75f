"""Range replies for stored files: 206 with ``Content-Range``, ``Accept-Ranges`` and an ``ETag`` (RFC 9110).

An MCAP reader fetching over HTTP (Foxglove, ``mcap`` with a ranged reader) reads
the footer and summary first, then seeks: without ranges it would have to fetch
the whole file. Keyed and signed downloads answer the same way, on every blob
store: stored bytes are read with a ranged read, the original bytes of a
compressed file are decompressed from the start (``Download.chunks``).
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Response, request

from core.protocol import HEADER_ACCEPT_RANGES, HEADER_CONTENT_RANGE, HEADER_IF_RANGE, HEADER_RANGE
from core.server.errors import RangeNotSatisfiable
from core.server.service import Download


def requested_range(size: int, etag: str) -> tuple[int, int] | None:
    """(start, stop) of a single satisfiable ``Range``; None for the whole file (no Range, several, stale If-Range).

    Raises 416 for a range that starts beyond the end, with ``Content-Range: bytes */size``.
    """
    if HEADER_RANGE not in request.headers:
        return None
    requested = request.range
    if requested is None or len(requested.ranges) != 1 or requested.units != "bytes":
        return None  # unparsable or multipart/byteranges: RFC 9110 lets us send the whole file
    if_range = request.headers.get(HEADER_IF_RANGE)
    if if_range is not None and if_range != etag:
        return None  # the client's copy is of another version: send it whole
    bounds = requested.range_for_length(size)
    if bounds is None:
        msg = f"range {request.headers[HEADER_RANGE]!r} is outside the {size}-byte file"
        raise RangeNotSatisfiable(msg, length=size)
    return bounds


def file_response(download: Download, extra_headers: Mapping[str, str] | None = None) -> Response:
    """The whole file (200) or one requested range of it (206), with ``ETag`` and ``Accept-Ranges``."""
    etag = f'"{download.record.sha256}{"-raw" if download.raw else ""}"'
    headers = {**(extra_headers or {}), "ETag": etag, HEADER_ACCEPT_RANGES: "bytes"}
    bounds = requested_range(download.size, etag)
    if bounds is None:
        headers["Content-Length"] = str(download.size)
        body, status = download.chunks(), 200
    else:
        start, stop = bounds
        headers["Content-Length"] = str(stop - start)
        headers[HEADER_CONTENT_RANGE] = f"bytes {start}-{stop - 1}/{download.size}"
        body, status = download.chunks(start, stop - start), 206
    return Response(body, status=status, mimetype="application/octet-stream", headers=headers, direct_passthrough=True)
