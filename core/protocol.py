"""Wire protocol shared by the upload server and its clients.

Every path, header, JSON field, upload state and error code lives here, so the
robot's client and the server can never disagree about a name. Nothing in this
module imports Flask or requests.
"""

from __future__ import annotations

import enum
from typing import Any, TypedDict

PROTOCOL_VERSION = 1

# --- Paths ------------------------------------------------------------------
# Flask rule syntax; the client builds concrete URLs with the helpers below.
# The client's ``upload_url`` is the server root plus UPLOAD_PREFIX, exactly as
# in the seed guide: ``NetworkManager(upload_url="https://host:8080/upload")``.
UPLOAD_PREFIX = "/upload"
HEALTH_PATH = "/health"
INIT_PATH = "/upload/init"
UPLOAD_PATH = "/upload/<upload_id>"
CHUNK_PATH = "/upload/<upload_id>/chunk/<int(signed=True):index>"  # signed: -1 gets a clear 400, not 404
FINALIZE_PATH = "/upload/<upload_id>/finalize"
UPLOADS_PATH = "/uploads"
DOWNLOAD_PATH = "/uploads/<upload_id>/file"
BAGS_PATH = "/bags"  # the bag catalogue (core/server/catalog.py)
BAG_PATH = "/bags/<bag_id>"
BAG_DOWNLOAD_PATH = "/bags/<bag_id>/download"
BAG_LINKS_PATH = "/bags/<bag_id>/links"  # short-lived signed download links of a bag's files
SIGNED_DOWNLOAD_PATH = "/signed/<upload_id>"  # no key: ?expires=<epoch s>&signature=<hex HMAC>
PARAM_EXPIRES = "expires"
PARAM_SIGNATURE = "signature"
# Robots report recorder and upload-queue status here; the reply carries operator commands.
HEARTBEAT_PATH = "/robots/<robot_id>/heartbeat"

# --- Headers ----------------------------------------------------------------
HEADER_CHUNK_SHA256 = "X-Chunk-SHA256"
# Chunk pieces (feature FEATURE_CHUNK_PIECES): a chunk PUT carrying X-Chunk-Offset sends only the bytes
# [offset, offset + Content-Length) of the chunk. The body is checked against X-Piece-SHA256, and
# X-Chunk-SHA256 then names the sha256 of the *whole* chunk, checked once its last piece arrived.
HEADER_CHUNK_OFFSET = "X-Chunk-Offset"
HEADER_PIECE_SHA256 = "X-Piece-SHA256"
# The cheaper per-chunk check (feature FEATURE_CHUNK_CRC32C): CRC-32C (Castagnoli, as in iSCSI, ext4 and
# S3's x-amz-checksum-crc32c) as 8 hex digits, big-endian. It stands in for X-Chunk-SHA256 (and
# X-Piece-CRC32C for X-Piece-SHA256): a chunk carries one of the two. It catches what corrupts a chunk in
# transit or at rest before the chunk is acknowledged; the whole-file sha256 checked at finalize is what
# makes a copy "verified", whichever chunk check was used.
HEADER_CHUNK_CRC32C = "X-Chunk-CRC32C"
HEADER_PIECE_CRC32C = "X-Piece-CRC32C"
HEADER_CONTENT_MD5 = "Content-MD5"  # RFC 1864: base64 of the raw md5 digest
HEADER_API_KEY = "X-API-Key"
HEADER_AUTHORIZATION = "Authorization"
AUTH_SCHEME = "Bearer"
HEADER_RETRY_AFTER = "Retry-After"
# Byte ranges of downloads (RFC 9110 14): both stores answer them.
HEADER_RANGE = "Range"
HEADER_IF_RANGE = "If-Range"
HEADER_ACCEPT_RANGES = "Accept-Ranges"
HEADER_CONTENT_RANGE = "Content-Range"
HEADER_REQUEST_ID = "X-Request-ID"
# flask-limiter's default names; every limited reply carries them.
HEADER_RATELIMIT_LIMIT = "X-RateLimit-Limit"
HEADER_RATELIMIT_REMAINING = "X-RateLimit-Remaining"
HEADER_RATELIMIT_RESET = "X-RateLimit-Reset"
CHUNK_CONTENT_TYPE = "application/octet-stream"

# --- Query parameters -------------------------------------------------------
PARAM_LIMIT = "limit"
PARAM_OFFSET = "offset"
PARAM_STATE = "state"
PARAM_CLIENT = "client"
PARAM_RAW = "raw"  # ?raw=1 on DOWNLOAD_PATH returns the stored (compressed) bytes
# Filters of BAGS_PATH (times are nanoseconds since the epoch, like rosbag2's).
PARAM_ROBOT = "robot"
PARAM_SESSION = "session"
PARAM_SINCE_NS = "since_ns"
PARAM_UNTIL_NS = "until_ns"
PARAM_TOPIC = "topic"
PARAM_TOPIC_PREFIX = "topic_prefix"
PARAM_MESSAGE_TYPE = "type"
PARAM_RECOVERED = "recovered"
PARAM_ORDER = "order"  # "desc" (newest first, the default) or "asc"

# --- Sizes ------------------------------------------------------------------
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DEFAULT_CHUNK_SIZE = 8 * MiB
# Smallest piece of a chunk a server accepts, except the piece that ends the chunk: each piece costs
# one request and one fsync, so a link that breaks this often is not worth a faster cadence.
MIN_PIECE_SIZE = 64 * KiB
FEATURE_CHUNK_PIECES = "chunk-pieces"  # listed in GET /health "features" by servers that accept pieces
# Listed in GET /health and in the init reply's "features" by servers that take the whole-file sha256 in
# the finalize body (FinalizeRequest). A client that finds it missing in the init reply hashes the bag
# before init and declares the seed's checksum (md5) and sha256 there: an older server ignores the body.
FEATURE_FINALIZE_SHA256 = "finalize-sha256"
# Listed in GET /health and the init reply's "features" by servers that check X-Chunk-CRC32C. A client
# sends it instead of X-Chunk-SHA256 only to such a server: an older one would store the chunk unchecked.
FEATURE_CHUNK_CRC32C = "chunk-crc32c"
# Init's "fingerprint": sha256 of the file's size (8 bytes, big-endian), its first FINGERPRINT_EDGE bytes
# and its last FINGERPRINT_EDGE bytes (the whole file when shorter than twice that). Known before sending,
# it finds a verified copy worth hashing the whole bag for (the reply's "dedup_candidate") and the upload
# to resume; it never stands in for the whole-file sha256.
FINGERPRINT_EDGE = 1 * MiB


class ChecksumAlgorithm(str, enum.Enum):
    """Whole-file checksum names; md5 is the seed's contract, sha256 ours."""

    MD5 = "md5"
    SHA256 = "sha256"


class ChunkAlgorithm(str, enum.Enum):
    """Per-chunk checksums: sha256 (the original wire format), crc32c (the cheaper one, FEATURE_CHUNK_CRC32C)."""

    SHA256 = "sha256"
    CRC32C = "crc32c"


# The chunk and piece header of each per-chunk checksum.
CHUNK_CHECKSUM_HEADERS = {ChunkAlgorithm.SHA256: HEADER_CHUNK_SHA256, ChunkAlgorithm.CRC32C: HEADER_CHUNK_CRC32C}
PIECE_CHECKSUM_HEADERS = {ChunkAlgorithm.SHA256: HEADER_PIECE_SHA256, ChunkAlgorithm.CRC32C: HEADER_PIECE_CRC32C}


class Codec(str, enum.Enum):
    """How the server stores a finished file."""

    NONE = "none"
    ZSTD = "zstd"
    GZIP = "gzip"


class UploadState(str, enum.Enum):
    """Lifecycle of an upload on the server."""

    UPLOADING = "uploading"
    FINALIZING = "finalizing"
    COMPLETE = "complete"
    FAILED = "failed"
    ABORTED = "aborted"


TERMINAL_STATES = frozenset({UploadState.COMPLETE, UploadState.FAILED, UploadState.ABORTED})


class ErrorCode(str, enum.Enum):
    """Machine-readable ``error.code`` values of every 4xx/5xx JSON reply."""

    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    UPLOAD_EXPIRED = "upload_expired"
    UPLOAD_ABORTED = "upload_aborted"  # aborted by its client (DELETE /upload/<id>); its status answers 410
    UPLOAD_DELETED = "upload_deleted"  # a stored upload an admin (or RETENTION_DAYS) deleted
    BAG_DELETED = "bag_deleted"  # the error_code of an upload whose bag an admin deleted
    PAYLOAD_TOO_LARGE = "payload_too_large"
    LENGTH_REQUIRED = "length_required"  # a chunk sent without Content-Length (e.g. chunked encoding)
    FILE_TOO_LARGE = "file_too_large"
    CHUNK_INDEX_OUT_OF_RANGE = "chunk_index_out_of_range"
    CHUNK_SIZE_MISMATCH = "chunk_size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    RATE_LIMITED = "rate_limited"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    PART_MISSING = "part_missing"  # the server lost an unfinished upload's data: start a new upload
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"


class RobotAction(str, enum.Enum):
    """Operator commands a robot's recorder accepts; delivered in the heartbeat reply."""

    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    SPLIT = "split"


class CommandState(str, enum.Enum):
    """Lifecycle of an operator command: pending until the robot acknowledges it (or it expires)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


# --- JSON documents -----------------------------------------------------------
class BlockedReason(str, enum.Enum):
    """Why a robot's upload is not moving, in ``status()``, upload events and the heartbeat's ``uploads``.

    Each job entry carries ``blocked`` (one of these, or null) and ``blocked_until``
    (epoch seconds of the next attempt, or null); the heartbeat's ``uploads.blocked``
    counts jobs per reason and ``uploads.blocked_until`` has the soonest retry per reason.
    """

    AUTH = "auth"  # 401/403: no key, a wrong or revoked key; retried with capped backoff
    RATE_LIMITED = "rate_limited"  # 429: waits out Retry-After
    SERVER_FAILED = "server_failed"  # the server ended the upload failed/expired: re-hashed and re-initialised
    SERVER_ERROR = "server_error"  # 5xx (507 disk full included)
    UNREACHABLE = "unreachable"  # connection errors, timeouts, watchdog aborts
    REJECTED = "rejected"  # any other 4xx: retried, since a server change may accept it
    FILE_CHANGING = "file_changing"  # the bag changed while it was hashed or sent: re-hashed and re-sent
    IO_ERROR = "io_error"  # the robot could not read the bag (permissions, a failing disk)
    FAILED = "failed"  # permanent (file too large, filename refused): needs a human; listed by ``failed``


# The JSON field of an ``invalid_field`` error that names the refused request field.
ERROR_FIELD = "field"
FILENAME_FIELD = "filename"


class InitRequest(TypedDict, total=False):
    """Body of ``POST /upload/init`` (seed fields first)."""

    filename: str
    filesize: int
    chunks: int
    checksum: str  # whole-file md5 hex, the seed's contract
    compression: bool | str  # seed: bool; also a Codec value
    sha256: str  # whole-file sha256 hex; preferred for verification and dedup
    chunk_size: int  # optional; otherwise ceil(filesize / chunks)
    metadata: dict[str, Any]
    fingerprint: str  # see FINGERPRINT_EDGE; sent by clients that declare the sha256 at finalize


class FinalizeRequest(TypedDict, total=False):
    """Optional body of ``POST /upload/<id>/finalize`` (an empty body is the seed's finalize)."""

    sha256: str  # whole-file sha256 hex, from a client that hashed while sending; must match init's if both


class CommandDoc(TypedDict):
    """One operator command in a heartbeat reply's ``commands`` list."""

    id: str
    action: str  # a RobotAction value
    args: dict[str, Any]
    created_at: float


class CommandAck(TypedDict, total=False):
    """The robot's answer to a command, sent in its next heartbeat's ``acks`` list."""

    id: str
    ok: bool
    message: str


class HeartbeatRequest(TypedDict, total=False):
    """Body of ``POST /robots/<robot_id>/heartbeat``: status snapshots plus acknowledgements."""

    sent_at: float  # robot's wall clock, informational
    recorder: dict[str, Any] | None  # Recorder.status()
    uploads: list[dict[str, Any]] | dict[str, Any] | None  # NetworkManager.status()
    host: dict[str, Any]  # hostname, version, disk
    acks: list[CommandAck]


class HeartbeatReply(TypedDict):
    success: bool
    commands: list[CommandDoc]
    interval: float  # seconds the server suggests until the next heartbeat
    server_time: float


class ErrorBody(TypedDict):
    code: str
    message: str


class ErrorReply(TypedDict):
    success: bool  # always False
    error: ErrorBody


# --- URL helpers for clients -----------------------------------------------------
def server_root(upload_url: str) -> str:
    """The server root for an ``upload_url`` ending in UPLOAD_PREFIX (or not)."""
    url = upload_url.rstrip("/")
    return url[: -len(UPLOAD_PREFIX)] if url.endswith(UPLOAD_PREFIX) else url


def _upload_base(upload_url: str) -> str:
    return server_root(upload_url) + UPLOAD_PREFIX


def health_url(upload_url: str) -> str:
    return server_root(upload_url) + HEALTH_PATH


def init_url(upload_url: str) -> str:
    return server_root(upload_url) + INIT_PATH


def upload_status_url(upload_url: str, upload_id: str) -> str:
    return f"{_upload_base(upload_url)}/{upload_id}"


def chunk_url(upload_url: str, upload_id: str, index: int) -> str:
    return f"{_upload_base(upload_url)}/{upload_id}/chunk/{index}"


def finalize_url(upload_url: str, upload_id: str) -> str:
    return f"{_upload_base(upload_url)}/{upload_id}/finalize"


def uploads_url(upload_url: str) -> str:
    return server_root(upload_url) + UPLOADS_PATH


def download_url(upload_url: str, upload_id: str) -> str:
    return f"{server_root(upload_url)}{UPLOADS_PATH}/{upload_id}/file"


def heartbeat_url(upload_url: str, robot_id: str) -> str:
    return f"{server_root(upload_url)}/robots/{robot_id}/heartbeat"


def chunk_count(filesize: int, chunk_size: int) -> int:
    """Number of chunks for a file; an empty file still has one (empty) chunk."""
    return max(1, -(-filesize // chunk_size))


def chunk_length(filesize: int, chunk_size: int, index: int) -> int:
    """Exact byte length of chunk ``index``: every chunk is full but the last."""
    start = index * chunk_size
    return max(0, min(chunk_size, filesize - start))
