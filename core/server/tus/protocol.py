"""Wire facts of tus 1.0.0 (https://tus.io/protocols/resumable-upload) as this server speaks it.

Only the server speaks tus here (the clients are third-party: tuspy, tus-js-client, Uppy), so
these names live beside the tus front rather than in ``core/protocol.py``.
"""

from __future__ import annotations

TUS_VERSION = "1.0.0"
TUS_PREFIX = "/files"
TUS_COLLECTION_PATH = "/files/"
TUS_UPLOAD_PATH = "/files/<upload_id>"

HEADER_TUS_RESUMABLE = "Tus-Resumable"
HEADER_TUS_VERSION = "Tus-Version"
HEADER_TUS_EXTENSION = "Tus-Extension"
HEADER_TUS_MAX_SIZE = "Tus-Max-Size"
HEADER_TUS_CHECKSUM_ALGORITHM = "Tus-Checksum-Algorithm"
HEADER_UPLOAD_OFFSET = "Upload-Offset"
HEADER_UPLOAD_LENGTH = "Upload-Length"
HEADER_UPLOAD_DEFER_LENGTH = "Upload-Defer-Length"
HEADER_UPLOAD_METADATA = "Upload-Metadata"
HEADER_UPLOAD_CHECKSUM = "Upload-Checksum"
HEADER_UPLOAD_EXPIRES = "Upload-Expires"
HEADER_UPLOAD_CONCAT = "Upload-Concat"
HEADER_LOCATION = "Location"
HEADER_CACHE_CONTROL = "Cache-Control"

# PATCH bodies (and creation-with-upload bodies) must carry this Content-Type.
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# The tus checksum extension's status for a body that does not match its Upload-Checksum.
STATUS_CHECKSUM_MISMATCH = 460

EXT_CREATION = "creation"
EXT_CREATION_WITH_UPLOAD = "creation-with-upload"
EXT_CREATION_DEFER_LENGTH = "creation-defer-length"
EXT_TERMINATION = "termination"
EXT_CHECKSUM = "checksum"
EXT_EXPIRATION = "expiration"
EXT_CONCATENATION = "concatenation"

CHECKSUM_ALGORITHMS = ("sha1", "sha256")

# The only value of Upload-Defer-Length: the length comes later, in a PATCH's Upload-Length.
DEFER_LENGTH = "1"

CONCAT_PARTIAL = "partial"
CONCAT_FINAL = "final"

# Upload-Metadata keys this server reads; every other key lands in the upload's ``metadata`` as a string.
META_FILENAME = "filename"
META_NAME = "name"  # what Uppy and tus-js-client examples send
META_SHA256 = "sha256"  # the whole-file sha256 hex, as in the native init
META_MD5 = "checksum"  # the whole-file md5 hex (the native init's seed field)
META_COMPRESSION = "compression"
META_METADATA = "metadata"  # a JSON object, merged into the native metadata

# Headers a browser client must be allowed to send, and to read, across origins.
CORS_REQUEST_HEADERS = (
    HEADER_TUS_RESUMABLE,
    HEADER_UPLOAD_OFFSET,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_DEFER_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_UPLOAD_CONCAT,
    "X-HTTP-Method-Override",
)
CORS_EXPOSED_HEADERS = (
    HEADER_LOCATION,
    HEADER_TUS_RESUMABLE,
    HEADER_TUS_VERSION,
    HEADER_TUS_EXTENSION,
    HEADER_TUS_MAX_SIZE,
    HEADER_TUS_CHECKSUM_ALGORITHM,
    HEADER_UPLOAD_OFFSET,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_DEFER_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_EXPIRES,
    HEADER_UPLOAD_CONCAT,
)
CORS_METHODS = ("HEAD", "PATCH")
