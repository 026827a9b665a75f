"""Parse tus request headers into typed values, or the 4xx the tus specification names for them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from core.protocol import ErrorCode
from core.server.errors import ApiError, InvalidField
from core.server.tus.protocol import (
    CHECKSUM_ALGORITHMS,
    CONCAT_FINAL,
    CONCAT_PARTIAL,
    DEFER_LENGTH,
    HEADER_TUS_RESUMABLE,
    HEADER_TUS_VERSION,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_UPLOAD_CONCAT,
    HEADER_UPLOAD_DEFER_LENGTH,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_METADATA,
    STATUS_CHECKSUM_MISMATCH,
    TUS_PREFIX,
    TUS_VERSION,
)

MAX_INTEGER_DIGITS = 19  # a signed 64-bit byte count


class VersionMismatch(ApiError):
    """412: the request names no tus version, or one this server does not speak."""

    code = 412
    error_code = ErrorCode.BAD_REQUEST

    def get_headers(self, *args: object, **kwargs: object) -> list[tuple[str, str]]:
        return [*super().get_headers(), (HEADER_TUS_VERSION, TUS_VERSION)]


class TusChecksumMismatch(ApiError):
    """460 (tus checksum extension): the PATCH body does not match its Upload-Checksum; nothing was stored."""

    code = STATUS_CHECKSUM_MISMATCH
    error_code = ErrorCode.CHECKSUM_MISMATCH


class UnsupportedChecksum(ApiError):
    """400: an Upload-Checksum algorithm the server does not advertise in Tus-Checksum-Algorithm."""

    error_code = ErrorCode.INVALID_FIELD


def check_version(value: str | None) -> None:
    if value is None or value.strip() != TUS_VERSION:
        msg = f"{HEADER_TUS_RESUMABLE}: {TUS_VERSION} is required (got {value!r})"
        raise VersionMismatch(msg)


def byte_count(value: str | None, header: str, *, required: bool = True) -> int | None:
    """A non-negative integer header (Upload-Length, Upload-Offset)."""
    if value is None:
        if required:
            msg = f"{header} is required"
            raise InvalidField(msg, details={"field": header})
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > MAX_INTEGER_DIGITS:
        msg = f"{header} must be a non-negative integer"
        raise InvalidField(msg, details={"field": header})
    return int(text)


def defer_length(value: str | None, sent: Mapping[str, str], *, final: bool) -> bool:
    """Upload-Defer-Length at creation: ``1`` or absent; never with Upload-Length, nor on a final upload."""
    if value is None:
        return False
    if value.strip() != DEFER_LENGTH or HEADER_UPLOAD_LENGTH in sent or final:
        msg = (
            f"{HEADER_UPLOAD_DEFER_LENGTH} must be {DEFER_LENGTH}, without {HEADER_UPLOAD_LENGTH}, "
            "and not on a final (concatenated) upload"
        )
        raise InvalidField(msg, details={"field": HEADER_UPLOAD_DEFER_LENGTH})
    return True


def metadata(value: str | None) -> dict[str, str]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs (the value may be absent)."""
    pairs: dict[str, str] = {}
    if value is None or not value.strip():
        return pairs
    for item in value.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not key or " " in encoded.strip() or key in pairs:
            msg = f"{HEADER_UPLOAD_METADATA} must be unique 'key base64' pairs separated by commas"
            raise InvalidField(msg, details={"field": HEADER_UPLOAD_METADATA})
        try:
            pairs[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as err:
            msg = f"{HEADER_UPLOAD_METADATA} value of {key!r} is not base64 of UTF-8 text"
            raise InvalidField(msg, details={"field": HEADER_UPLOAD_METADATA}) from err
    return pairs


@dataclass(frozen=True)
class Checksum:
    """An Upload-Checksum: the algorithm and the raw digest the body must have."""

    algorithm: str
    digest: bytes


def checksum(value: str | None) -> Checksum | None:
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        msg = f"{HEADER_UPLOAD_CHECKSUM} algorithm must be one of {list(CHECKSUM_ALGORITHMS)}"
        raise UnsupportedChecksum(msg, details={"field": HEADER_UPLOAD_CHECKSUM})
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        msg = f"{HEADER_UPLOAD_CHECKSUM} must be '<algorithm> <base64 digest>'"
        raise InvalidField(msg, details={"field": HEADER_UPLOAD_CHECKSUM}) from err
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Concat:
    """Upload-Concat: ``partial``, or ``final`` with the ids of the partial uploads in order."""

    kind: str
    parts: tuple[str, ...] = ()


def concat(value: str | None) -> Concat | None:
    if value is None:
        return None
    text = value.strip()
    if text == CONCAT_PARTIAL:
        return Concat(CONCAT_PARTIAL)
    kind, _, urls = text.partition(";")
    parts = tuple(url.rstrip("/").rsplit("/", 1)[-1] for url in urls.split())
    if kind != CONCAT_FINAL or not parts or any(f"{TUS_PREFIX}/" not in url for url in urls.split()):
        msg = f"{HEADER_UPLOAD_CONCAT} must be 'partial' or 'final;{TUS_PREFIX}/<id> {TUS_PREFIX}/<id> ...'"
        raise InvalidField(msg, details={"field": HEADER_UPLOAD_CONCAT})
    return Concat(CONCAT_FINAL, parts)
