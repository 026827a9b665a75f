"""Compatibility names: the local-disk store moved to ``core.server.blobs.local`` behind the ``BlobStore`` interface."""

from __future__ import annotations

from core.server.blobs.base import BlobStore as BlobStoreInterface
from core.server.blobs.base import PartMissing, is_valid_id
from core.server.blobs.local import LocalBlobStore, PartFile, fsync_dir, make_dir_durably

# Code written against the original single implementation keeps working unchanged.
BlobStore = LocalBlobStore

__all__ = [
    "BlobStore",
    "BlobStoreInterface",
    "LocalBlobStore",
    "PartFile",
    "PartMissing",
    "fsync_dir",
    "is_valid_id",
    "make_dir_durably",
]
