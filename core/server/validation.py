"""Turn untrusted request input (init bodies, checksum headers, query strings) into typed values or 4xx errors."""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask.json.provider import DefaultJSONProvider

from core.checksums import HEX_DIGEST_LENGTHS, ChunkChecksum, is_hex_digest
from core.config import ServerConfig
from core.protocol import (
    CHUNK_CHECKSUM_HEADERS,
    HEADER_CHUNK_CRC32C,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_CONTENT_MD5,
    HEADER_PIECE_CRC32C,
    HEADER_PIECE_SHA256,
    PIECE_CHECKSUM_HEADERS,
    ChunkAlgorithm,
    Codec,
    UploadState,
    chunk_count,
)
from core.server.errors import FileTooLarge, InvalidField

MAX_FILENAME_LENGTH = 255
MAX_PAGE_SIZE = 500
MAX_PAGE_OFFSET = 2**31
# Deeper than any document the protocol defines (metadata included): a body nested beyond this
# is refused at parse time, so no later recursive step (dumps, storage, the dashboard) meets it.
MAX_JSON_DEPTH = 64


def json_depth(value: object) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_JSON_DEPTH:
            break
        pending.extend((child, depth + 1) for child in children)
    return deepest


class RequestJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a document nested too deeply refused as invalid JSON (a ``ValueError``).

    ``request.get_json`` parses through ``app.json``: every route's body goes through here,
    and werkzeug turns the ``ValueError`` into ``None`` (``silent=True``) or a 400. Without it
    10 KB of ``[`` is a ``RecursionError``, which no handler may map to a 4xx.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            value = super().loads(s, **kwargs)
        except RecursionError as err:
            msg = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            raise ValueError(msg) from err
        if json_depth(value) > MAX_JSON_DEPTH:
            msg = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            raise ValueError(msg)
        return value


@dataclass(frozen=True)
class InitSpec:
    """A validated ``POST /upload/init`` body."""

    filename: str
    filesize: int
    chunk_size: int
    chunks: int
    md5: str | None
    sha256: str | None
    compression: Codec
    metadata: dict[str, Any]
    fingerprint: str | None = None


def display_name(raw: object) -> str:
    """A safe display name: last path component, no control characters; never used as a path."""
    if not isinstance(raw, str):
        msg = "filename must be a string"
        raise InvalidField(msg, details={"field": "filename"})
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if name in {"", ".", ".."}:
        msg = f"filename {raw!r} has no usable name"
        raise InvalidField(msg, details={"field": "filename"})
    return name[:MAX_FILENAME_LENGTH]


def _int_field(body: Mapping[str, Any], name: str, *, minimum: int, required: bool) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}"
        raise InvalidField(msg, details={"field": name})
    return value


def _digest_field(body: Mapping[str, Any], name: str, algorithm: str) -> str | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    if not is_hex_digest(value, algorithm):
        msg = f"{name} must be a hex {algorithm} digest"
        raise InvalidField(msg, details={"field": name})
    return str(value).lower()


def _compression_field(value: object, config: ServerConfig) -> Codec:
    if value is None or value is False:
        return Codec.NONE
    if value is True:
        return config.compression_codec
    if isinstance(value, str):
        try:
            return Codec(value.strip().lower())
        except ValueError:
            pass
    msg = f"compression must be true, false or one of {[c.value for c in Codec]}"
    raise InvalidField(msg, details={"field": "compression"})


def _metadata_field(value: object, config: ServerConfig) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = "metadata must be a JSON object"
        raise InvalidField(msg, details={"field": "metadata"})
    if len(json.dumps(value, separators=(",", ":"))) > config.metadata_max_bytes:
        msg = f"metadata exceeds {config.metadata_max_bytes} bytes"
        raise InvalidField(msg, details={"field": "metadata"})
    return value


def _chunking(filesize: int, chunks: int | None, chunk_size: int | None, config: ServerConfig) -> tuple[int, int]:
    """(chunk_size, chunks): from the client's chunk_size, else from its chunk count, else the default."""
    if chunk_size is None:
        chunk_size = -(-filesize // chunks) if chunks and filesize else config.default_chunk_size
    expected = chunk_count(filesize, chunk_size)
    if chunks is not None and chunks != expected:
        msg = f"chunks={chunks} does not match filesize {filesize} in chunks of {chunk_size} bytes ({expected})"
        raise InvalidField(msg, details={"field": "chunks", "expected": expected})
    if chunk_size > config.max_chunk_size:
        msg = f"chunk_size {chunk_size} exceeds the maximum of {config.max_chunk_size} bytes"
        raise InvalidField(msg, details={"field": "chunk_size", "max": config.max_chunk_size})
    if expected > 1 and chunk_size < config.min_chunk_size:
        msg = f"chunk_size {chunk_size} is below the minimum of {config.min_chunk_size} bytes"
        raise InvalidField(msg, details={"field": "chunk_size", "min": config.min_chunk_size})
    return chunk_size, expected


def parse_init(body: object, config: ServerConfig) -> InitSpec:
    if not isinstance(body, dict):
        msg = "body must be a JSON object"
        raise InvalidField(msg)
    filename = display_name(body.get("filename"))
    filesize = _int_field(body, "filesize", minimum=0, required=True)
    assert filesize is not None  # noqa: S101 - required=True
    if filesize > config.max_file_size:
        msg = f"filesize {filesize} exceeds the maximum of {config.max_file_size} bytes"
        raise FileTooLarge(msg, details={"max": config.max_file_size})
    chunks = _int_field(body, "chunks", minimum=1, required=False)
    chunk_size = _int_field(body, "chunk_size", minimum=1, required=False)
    chunk_size, chunks = _chunking(filesize, chunks, chunk_size, config)
    return InitSpec(
        filename=filename,
        filesize=filesize,
        chunk_size=chunk_size,
        chunks=chunks,
        md5=_digest_field(body, "checksum", "md5"),
        sha256=_digest_field(body, "sha256", "sha256"),
        compression=_compression_field(body.get("compression"), config),
        metadata=_metadata_field(body.get("metadata"), config),
        fingerprint=_digest_field(body, "fingerprint", "sha256"),
    )


def parse_finalize(body: object) -> str | None:
    """The whole-file sha256 a finalize body declares (None: no body, or no ``sha256``)."""
    if body is None:
        return None
    if not isinstance(body, dict):
        msg = "body must be a JSON object"
        raise InvalidField(msg)
    return _digest_field(body, "sha256", "sha256")


def chunk_checksum_header(
    headers: Mapping[str, str], names: Mapping[ChunkAlgorithm, str] = CHUNK_CHECKSUM_HEADERS
) -> ChunkChecksum | None:
    """The one checksum a chunk (or, with PIECE_CHECKSUM_HEADERS, a piece) declares; None if it declares none.

    Two would leave one of them a claim nobody checks, so a request naming both is refused.
    """
    declared = [(algorithm, header, headers.get(header)) for algorithm, header in names.items()]
    present = [(algorithm, header, value.strip()) for algorithm, header, value in declared if value is not None]
    if not present:
        return None
    if len(present) > 1:
        msg = f"send one chunk checksum, not {' and '.join(header for _, header, _ in present)}"
        raise InvalidField(msg, details={"field": present[1][1]})
    algorithm, header, value = present[0]
    if not is_hex_digest(value, algorithm.value):
        msg = f"{header} must be a hex {algorithm.value} digest ({HEX_DIGEST_LENGTHS[algorithm.value]} digits)"
        raise InvalidField(msg, details={"field": header})
    return ChunkChecksum(algorithm, value.lower())


def chunk_offset_header(value: str | None) -> int | None:
    """X-Chunk-Offset: a piece's byte offset within its chunk (None: the body is the whole chunk)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 19:
        msg = f"{HEADER_CHUNK_OFFSET} must be a non-negative integer"
        raise InvalidField(msg, details={"field": HEADER_CHUNK_OFFSET})
    return int(text)


def piece_headers(headers: Mapping[str, str]) -> tuple[int, ChunkChecksum, ChunkChecksum] | None:
    """(offset, piece checksum, whole-chunk checksum) of a chunk piece; None for a whole-chunk PUT."""
    start = chunk_offset_header(headers.get(HEADER_CHUNK_OFFSET))
    if start is None:
        return None
    piece = chunk_checksum_header(headers, PIECE_CHECKSUM_HEADERS)
    chunk = chunk_checksum_header(headers)
    if piece is None or chunk is None:
        msg = (
            f"a chunk piece ({HEADER_CHUNK_OFFSET}) needs {HEADER_PIECE_SHA256} (or {HEADER_PIECE_CRC32C}) and "
            f"{HEADER_CHUNK_SHA256} (or {HEADER_CHUNK_CRC32C})"
        )
        raise InvalidField(msg, details={"field": HEADER_PIECE_SHA256 if piece is None else HEADER_CHUNK_SHA256})
    return start, piece, chunk


def content_md5_header(value: str | None) -> str | None:
    """Content-MD5 (base64 of the raw digest) as hex."""
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        msg = "Content-MD5 must be base64 of a 16-byte md5 digest"
        raise InvalidField(msg, details={"field": HEADER_CONTENT_MD5}) from err
    if len(digest) != 16:
        msg = "Content-MD5 must be base64 of a 16-byte md5 digest"
        raise InvalidField(msg, details={"field": HEADER_CONTENT_MD5})
    return digest.hex()


def page_param(args: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        msg = f"{name} must be an integer between 0 and {maximum}"
        raise InvalidField(msg, details={"field": name})
    return value


def state_param(raw: str | None) -> UploadState | None:
    if raw is None or raw == "":
        return None
    try:
        return UploadState(raw)
    except ValueError as err:
        msg = f"state must be one of {[s.value for s in UploadState]}"
        raise InvalidField(msg, details={"field": "state"}) from err
