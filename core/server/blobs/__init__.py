"""Where the bytes live: one ``BlobStore`` interface, on local disk or in S3, chosen by BLOB_STORE_URI."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from core.config import ConfigError
from core.server.blobs.base import (
    BlobStore,
    PartMissing,
    StoreMisconfigured,
    StoreUnavailable,
    is_valid_id,
)
from core.server.blobs.local import LocalBlobStore

__all__ = [
    "BlobStore",
    "LocalBlobStore",
    "PartMissing",
    "StoreMisconfigured",
    "StoreUnavailable",
    "is_valid_id",
    "open_blob_store",
]


def open_blob_store(uri: str, upload_dir: Path) -> BlobStore:
    """The store BLOB_STORE_URI names: empty = UPLOAD_DIR on local disk, ``file:///path``, or ``s3://bucket/prefix``."""
    parts = urlsplit(uri)
    if not uri or parts.scheme == "file":
        return LocalBlobStore(Path(unquote(parts.path)) if uri else upload_dir)
    if parts.scheme == "s3":
        from core.server.blobs.s3 import S3BlobStore

        return S3BlobStore(parts.netloc, parts.path.strip("/"))
    msg = f"BLOB_STORE_URI={uri!r} must be empty, file:///path or s3://bucket/prefix"
    raise ConfigError(msg)
