"""The OpenAPI 3 document of the whole HTTP API, served at ``/openapi.json``.

It is data: add an entry to ``PATHS`` when you add a route (a test fails
until every registered Flask route is listed here). ``operation()`` adds the
replies every route shares (401 without a key, 429 over a limit) so an entry
only states what is particular to its route. A schemathesis run against a live
gunicorn holds the server to this document.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, current_app, jsonify

import core
from core.config import ServerConfig
from core.protocol import (
    BAG_DOWNLOAD_PATH,
    BAG_LINKS_PATH,
    BAG_PATH,
    BAGS_PATH,
    CHUNK_PATH,
    DOWNLOAD_PATH,
    FEATURE_CHUNK_CRC32C,
    FINALIZE_PATH,
    HEADER_API_KEY,
    HEADER_CHUNK_CRC32C,
    HEADER_CHUNK_OFFSET,
    HEADER_CHUNK_SHA256,
    HEADER_CONTENT_MD5,
    HEADER_CONTENT_RANGE,
    HEADER_IF_RANGE,
    HEADER_PIECE_CRC32C,
    HEADER_PIECE_SHA256,
    HEADER_RANGE,
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    HEADER_RETRY_AFTER,
    HEALTH_PATH,
    HEARTBEAT_PATH,
    INIT_PATH,
    MIN_PIECE_SIZE,
    PARAM_CLIENT,
    PARAM_EXPIRES,
    PARAM_LIMIT,
    PARAM_MESSAGE_TYPE,
    PARAM_OFFSET,
    PARAM_ORDER,
    PARAM_RAW,
    PARAM_RECOVERED,
    PARAM_ROBOT,
    PARAM_SESSION,
    PARAM_SIGNATURE,
    PARAM_SINCE_NS,
    PARAM_STATE,
    PARAM_TOPIC,
    PARAM_TOPIC_PREFIX,
    PARAM_UNTIL_NS,
    SIGNED_DOWNLOAD_PATH,
    UPLOAD_PATH,
    UPLOADS_PATH,
    Codec,
    ErrorCode,
    RobotAction,
    UploadState,
)
from core.server.auth import public
from core.server.robots import MAX_ROBOT_ID_LENGTH
from core.server.tus import protocol as tus
from core.server.validation import MAX_JSON_DEPTH, MAX_PAGE_OFFSET, MAX_PAGE_SIZE

OPENAPI_PATH = "/openapi.json"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


STRING, INTEGER, NUMBER, BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
OBJECT: Schema = {"type": "object", "additionalProperties": True}
HEX_MD5 = {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}
HEX_SHA256 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
HEX_CRC32C = {"type": "string", "pattern": "^[0-9a-fA-F]{8}$"}
# Omitted, null and "" all mean "no digest" to the server (validation._digest_field).
OPTIONAL_MD5 = {"type": "string", "pattern": "^([0-9a-fA-F]{32})?$", "nullable": True}
OPTIONAL_SHA256 = {"type": "string", "pattern": "^([0-9a-fA-F]{64})?$", "nullable": True}
# A status report's free-form parts: objects or lists (validation in robots._parse_heartbeat).
REPORT: Schema = {"anyOf": [OBJECT, {"type": "array"}], "nullable": True}
ROBOT_ID = {
    "type": "string",
    "pattern": f"^[^\\x00-\\x1f\\x7f]{{1,{MAX_ROBOT_ID_LENGTH}}}$",
    "description": f"1-{MAX_ROBOT_ID_LENGTH} characters, no control characters",
}
BASE64_MD5 = {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}


def init_request(config: ServerConfig) -> Schema:
    """The init body, with this server's size limits (a larger file is a 413, a larger chunk a 400)."""
    return {
        "type": "object",
        "required": ["filename", "filesize"],
        "properties": {
            "filename": {"type": "string", "minLength": 1, "description": "Display name only; never used as a path"},
            "filesize": {"type": "integer", "minimum": 0, "maximum": config.max_file_size},
            "chunks": {"type": "integer", "minimum": 1, "nullable": True},
            "chunk_size": {"type": "integer", "minimum": 1, "maximum": config.max_chunk_size, "nullable": True},
            "checksum": {**OPTIONAL_MD5, "description": "Whole-file md5 (the seed's contract)"},
            "sha256": OPTIONAL_SHA256,
            "fingerprint": {
                **OPTIONAL_SHA256,
                "description": "sha256 of the size (8 bytes big-endian), first MiB and last MiB: resume and "
                "dedup candidates for a client that declares the sha256 at finalize",
            },
            "compression": {
                "oneOf": [BOOLEAN, {"type": "string", "enum": [c.value for c in Codec]}],
                "nullable": True,
            },
            "metadata": {
                **nullable(OBJECT),
                "description": f"At most METADATA_MAX_BYTES ({config.metadata_max_bytes}) as compact JSON, "
                f"nested at most {MAX_JSON_DEPTH} levels with the body",
            },
        },
    }


FINALIZE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "sha256": {
            **OPTIONAL_SHA256,
            "description": "Whole-file sha256 from a client that hashed while sending; must match init's if both",
        },
    },
}


COMMAND_REQUEST: Schema = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": {"type": "string", "enum": [a.value for a in RobotAction]},
        "args": nullable(OBJECT),
    },
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string", "enum": [c.value for c in ErrorCode]}, "message": STRING},
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "timestamp", "version", "features"],
        "properties": {"status": STRING, "timestamp": STRING, "version": STRING, "features": {"type": "array"}},
    },
    "Upload": {
        "type": "object",
        "required": ["upload_id", "state", "filename", "filesize", "chunk_size", "chunks", "received_count"],
        "properties": {
            "upload_id": STRING,
            "state": {"type": "string", "enum": [s.value for s in UploadState]},
            "filename": STRING,
            "filesize": {**nullable(INTEGER), "description": "null while a tus upload's length is deferred"},
            "chunk_size": INTEGER,
            "chunks": {**nullable(INTEGER), "description": "null while a tus upload's length is deferred"},
            "received_count": INTEGER,
            "bytes_received": INTEGER,
            "md5": nullable(STRING),
            "sha256": nullable(STRING),
            "verified": BOOLEAN,
            "compression": STRING,
            "codec": nullable(STRING),
            "stored_size": nullable(INTEGER),
            "compression_ratio": nullable(NUMBER),
            "deduplicated": BOOLEAN,
            "progress": NUMBER,
            "error": nullable(OBJECT),
            "created_at": STRING,
            "updated_at": STRING,
            "owner": STRING,
            "metadata": OBJECT,
            "received": {"type": "array", "items": INTEGER},
            "missing": {"type": "array", "items": INTEGER},
        },
    },
    "UploadReply": {"allOf": [{"type": "object", "properties": {"success": BOOLEAN}}, ref("Upload")]},
    "DeleteReply": {
        "allOf": [
            ref("UploadReply"),
            {
                "type": "object",
                "required": ["bytes_freed"],
                "properties": {
                    "bytes_freed": INTEGER,
                    "shared_with": {"type": ["string", "null"], "description": "An upload still using the file"},
                },
            },
        ]
    },
    "InitReply": {
        "type": "object",
        "required": ["success", "upload_id", "compression_enabled", "chunk_size", "received"],
        "properties": {
            "success": BOOLEAN,
            "upload_id": STRING,
            "compression_enabled": BOOLEAN,
            "compression": STRING,
            "chunk_size": INTEGER,
            "chunks": INTEGER,
            "received": {"type": "array", "items": INTEGER},
            "state": STRING,
            "deduplicated": BOOLEAN,
            "resumed": BOOLEAN,
            "verified": BOOLEAN,
            "dedup_candidate": {
                **BOOLEAN,
                "description": "A verified copy has this size and fingerprint: finalize with the sha256 "
                "before sending chunks, deduplicated if it matches",
            },
            "features": {"type": "array", "items": STRING, "description": "As in GET /health"},
        },
    },
    "ChunkReply": {
        "type": "object",
        "required": ["success", "upload_id", "index", "received_count", "chunks", "duplicate"],
        "properties": {
            "success": BOOLEAN,
            "upload_id": STRING,
            "index": INTEGER,
            "received_count": INTEGER,
            "chunks": INTEGER,
            "duplicate": BOOLEAN,
            # Only in replies to a chunk piece (X-Chunk-Offset):
            "chunk_offset": INTEGER,
            "piece_length": INTEGER,
            "chunk_complete": BOOLEAN,
        },
    },
    "UploadList": {
        "type": "object",
        "required": ["success", "uploads", "total", "limit", "offset"],
        "properties": {
            "success": BOOLEAN,
            "uploads": {"type": "array", "items": ref("Upload")},
            "total": INTEGER,
            "limit": INTEGER,
            "offset": INTEGER,
        },
    },
    "BagTopic": {
        "type": "object",
        "required": ["name", "type", "message_count"],
        "properties": {"name": STRING, "type": STRING, "message_count": INTEGER},
    },
    "BagFile": {
        "type": "object",
        "properties": {
            "upload_id": STRING,
            "filename": STRING,
            "kind": {"type": "string", "enum": ["storage", "metadata", "other"]},
            "size": INTEGER,
            "stored_size": INTEGER,
            "sha256": nullable(STRING),
            "parsed": {**BOOLEAN, "description": "Whether the server could read the file's contents"},
            "download": {**STRING, "description": "Path of the file's download"},
        },
    },
    "Bag": {
        "type": "object",
        "description": "A recording: its identifiers as the robot declared them, its contents as read from the "
        "bag at finalize (MCAP summary, else metadata.yaml). Times are nanoseconds since the epoch.",
        "properties": {
            "bag_id": STRING,
            "name": STRING,
            "owner": STRING,
            "robot_id": STRING,
            "session": STRING,
            "split_index": INTEGER,
            "storage": STRING,
            "recovered": BOOLEAN,
            "start_ns": INTEGER,
            "end_ns": INTEGER,
            "duration_ns": INTEGER,
            "message_count": INTEGER,
            "size": INTEGER,
            "stored_size": INTEGER,
            "updated_at": nullable(STRING),
            "topics": {"type": "array", "items": ref("BagTopic")},
            "files": {"type": "array", "items": ref("BagFile"), "description": "Only in a bag's detail"},
        },
    },
    "BagList": {
        "type": "object",
        "required": ["success", "bags", "total", "limit", "offset"],
        "properties": {
            "success": BOOLEAN,
            "bags": {"type": "array", "items": ref("Bag")},
            "total": INTEGER,
            "limit": INTEGER,
            "offset": INTEGER,
        },
    },
    "HeartbeatRequest": {
        "type": "object",
        "properties": {
            "sent_at": nullable(NUMBER),  # null: not given, like leaving it out
            "recorder": REPORT,
            "uploads": REPORT,
            "host": REPORT,
            "acks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": STRING, "ok": BOOLEAN, "message": STRING},
                },
            },
        },
    },
    "HeartbeatReply": {
        "type": "object",
        "required": ["success", "commands", "interval", "server_time"],
        "properties": {
            "success": BOOLEAN,
            "commands": {"type": "array", "items": OBJECT},
            "interval": NUMBER,
            "server_time": NUMBER,
        },
    },
}

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

ERROR_MEANINGS = {
    400: "Invalid JSON, field, parameter or header",
    401: "Missing, invalid or revoked API key",
    403: "The key may not do this",
    404: "No such upload for this key (another robot's upload is reported as missing too)",
    409: "The upload is not in a state that allows this",
    410: "The upload expired (TTL sweep, upload_expired) or the server lost its data (part_missing); init again",
    411: "Content-Length required",
    413: "Body, chunk or file larger than allowed",
    415: "Unsupported media type",
    416: "The Range starts beyond the end of the file (Content-Range: bytes */length)",
    412: "tus: Tus-Resumable is missing or not 1.0.0 (Tus-Version names the version)",
    429: "Rate limit exceeded; see Retry-After and X-RateLimit-*",
    460: "tus checksum extension: the body does not match its Upload-Checksum; nothing of it was stored",
    507: "The server's storage is full",
}

RATE_LIMIT_HEADERS = {
    name: {"schema": INTEGER, "description": meaning}
    for name, meaning in {
        HEADER_RATELIMIT_LIMIT: "Requests allowed in the current window",
        HEADER_RATELIMIT_REMAINING: "Requests left in the current window",
        HEADER_RATELIMIT_RESET: "Unix time the window resets",
        HEADER_RETRY_AFTER: "Seconds until a request may succeed again",
    }.items()
}


# OpenAPI links: how an upload_id from one reply feeds the next call. Clients read them as the
# protocol's sequence; schemathesis follows them so generated calls reach real uploads, not 404s.
INIT, STATUS, CHUNK, FINALIZE, ABORT, DOWNLOAD = (
    "initUpload",
    "getUpload",
    "putChunk",
    "finalizeUpload",
    "abortUpload",
    "downloadFile",
)


def links(source: str, *targets: str) -> dict[str, Schema]:
    """Links to ``targets``, each passing the upload_id found at ``source`` (a runtime expression)."""
    found = {}
    for target in targets:
        parameters: dict[str, Any] = {"upload_id": source}
        if target == CHUNK:
            parameters["index"] = 0  # every upload has a chunk 0 (an empty file has one empty chunk)
        found[target] = {"operationId": target, "parameters": parameters}
    return found


FROM_BODY = "$response.body#/upload_id"
FROM_PATH = "$request.path.upload_id"
LINKS: dict[str, dict[str, Schema]] = {
    INIT: links(FROM_BODY, STATUS, CHUNK, FINALIZE, ABORT, DOWNLOAD),
    CHUNK: links(FROM_PATH, FINALIZE, STATUS, CHUNK),
    STATUS: links(FROM_PATH, CHUNK, FINALIZE, DOWNLOAD, ABORT),
    FINALIZE: links(FROM_PATH, STATUS, DOWNLOAD),
    ABORT: links(FROM_PATH, STATUS, FINALIZE),
}


def json_reply(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(
    summary: str,
    responses: dict[int, Schema],
    *,
    errors: tuple[int, ...] = (),
    parameters: tuple[Schema, ...] = (),
    body: Schema | None = None,
    is_public: bool = False,
    limited: bool = True,
    tag: str = "uploads",
    operation_id: str | None = None,
) -> Schema:
    """One operation: its own replies plus the shared 401/429 and the listed error statuses."""
    # A keyed route answers 429 to a client over RATELIMIT_UNAUTHENTICATED even when it has no limit itself.
    limited = limited or not is_public
    codes = {*errors, *(() if is_public else (401,)), *((429,) if limited else ())}
    replies: dict[str, Schema] = {str(status): reply for status, reply in responses.items()}
    if operation_id in LINKS:
        for status in responses:
            if 200 <= status < 300:
                replies[str(status)] = {**replies[str(status)], "links": LINKS[operation_id]}
    for status in sorted(codes):
        replies[str(status)] = json_reply(ERROR_MEANINGS[status], ref("Error"))
    if limited:
        replies["429"]["headers"] = RATE_LIMIT_HEADERS
    op: Schema = {"summary": summary, "tags": [tag], "responses": replies}
    if operation_id:
        op["operationId"] = operation_id
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    if is_public:
        op["security"] = []
    return op


def path_param(name: str, schema: Schema = STRING) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


UPLOAD_ID = path_param("upload_id")
BAG_ID = path_param("bag_id")
NANOSECONDS = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}
FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
BAG_FILTERS = (
    query_param(PARAM_ROBOT, STRING, "Robot id"),
    query_param(PARAM_SESSION, STRING, "Recording session"),
    query_param(PARAM_SINCE_NS, NANOSECONDS, "Bags that end at or after this time"),
    query_param(PARAM_UNTIL_NS, NANOSECONDS, "Bags that start at or before this time"),
    query_param(PARAM_TOPIC, STRING, "Bags with this topic"),
    query_param(PARAM_TOPIC_PREFIX, FLAG, f"true: `{PARAM_TOPIC}` is a prefix of the topic name"),
    query_param(PARAM_MESSAGE_TYPE, STRING, "Bags with a topic of this message type"),
    query_param(PARAM_RECOVERED, FLAG, "Only bags recovered after a crash (true) or not (false)"),
    query_param(PARAM_ORDER, {"type": "string", "enum": ["desc", "asc"]}, "By start time; desc first"),
    query_param(PARAM_LIMIT, {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_SIZE}, "Page size"),
    query_param(PARAM_OFFSET, {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_OFFSET}, "Page start"),
)
STATES = [s.value for s in UploadState]
JSON_BODY = {"required": True, "content": {"application/json": {"schema": ref("InitRequest")}}}
# Optional: the seed's finalize has no body.
FINALIZE_BODY = {"required": False, "content": {"application/json": {"schema": ref("FinalizeRequest")}}}
HTML = {"text/html": {"schema": STRING}}
RANGE_HEADERS = (
    header_param(HEADER_RANGE, STRING, "bytes=START-END, START- or -SUFFIX (one range)"),
    header_param(HEADER_IF_RANGE, STRING, "The ETag of the copy the client has; else the whole file"),
)
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
REDIRECT = {"description": "Redirect (to the sign-in page or the dashboard)"}

# --- tus 1.0.0 (core/server/tus/): replies are headers; errors are the same JSON documents.
TUS_RESUMABLE = {
    "name": tus.HEADER_TUS_RESUMABLE,
    "in": "header",
    "required": True,
    "schema": {"type": "string", "enum": [tus.TUS_VERSION]},
    "description": "Every tus request but OPTIONS; another value is 412",
}
TUS_CHECKSUM = header_param(
    tus.HEADER_UPLOAD_CHECKSUM,
    {"type": "string", "pattern": "^(sha1|sha256) [A-Za-z0-9+/]+={0,2}$"},
    "`<algorithm> <base64 digest>` of this body (sha1 or sha256); a mismatch is 460 and stores nothing",
)
TUS_BODY = {
    "required": False,
    "content": {tus.OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}


def tus_headers(*names: str) -> dict[str, Schema]:
    return {name: {"schema": STRING} for name in (tus.HEADER_TUS_RESUMABLE, *names)}


TUS_PATHS: dict[str, dict[str, Schema]] = {
    tus.TUS_COLLECTION_PATH: {
        "options": operation(
            "tus discovery: Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm",
            {
                204: {
                    "description": "What this server implements (concatenation only on local disk)",
                    "headers": tus_headers(
                        tus.HEADER_TUS_VERSION,
                        tus.HEADER_TUS_EXTENSION,
                        tus.HEADER_TUS_MAX_SIZE,
                        tus.HEADER_TUS_CHECKSUM_ALGORITHM,
                    ),
                }
            },
            is_public=True,
            tag="tus",
        ),
        "post": operation(
            "tus creation (and creation-with-upload, creation-defer-length, concatenation): a native upload "
            "with a tus offset",
            {
                201: {
                    "description": "Created; Location is the upload's URL (relative). A body sent with it is "
                    "stored (Upload-Offset); a file the server already holds verified is created complete",
                    "headers": tus_headers(tus.HEADER_LOCATION, tus.HEADER_UPLOAD_OFFSET, tus.HEADER_UPLOAD_EXPIRES),
                }
            },
            errors=(400, 404, 409, 410, 412, 413, 415, 460, 507),
            parameters=(
                TUS_RESUMABLE,
                header_param(tus.HEADER_UPLOAD_LENGTH, {"type": "integer", "minimum": 0}, "Bytes of the file"),
                header_param(
                    tus.HEADER_UPLOAD_DEFER_LENGTH,
                    {"type": "string", "enum": [tus.DEFER_LENGTH]},
                    "Instead of Upload-Length: the length comes in a later PATCH (not on a final upload)",
                ),
                header_param(
                    tus.HEADER_UPLOAD_METADATA,
                    STRING,
                    "`key base64,key base64`: filename (or name), sha256, checksum (md5), compression, "
                    "metadata (a JSON object); other keys join the upload's metadata as strings",
                ),
                header_param(
                    tus.HEADER_UPLOAD_CONCAT,
                    STRING,
                    f"`partial`, or `final;{tus.TUS_PREFIX}/<id> {tus.TUS_PREFIX}/<id> …` (no Upload-Length)",
                ),
                TUS_CHECKSUM,
            ),
            body=TUS_BODY,
            tag="tus",
        ),
    },
    tus.TUS_UPLOAD_PATH: {
        "head": operation(
            "tus offset: where to resume",
            {
                200: {
                    "description": "The upload's offset and length, or Upload-Defer-Length: 1 while the length "
                    "is not known yet (no body)",
                    "headers": tus_headers(
                        tus.HEADER_UPLOAD_OFFSET,
                        tus.HEADER_UPLOAD_LENGTH,
                        tus.HEADER_UPLOAD_DEFER_LENGTH,
                        tus.HEADER_UPLOAD_METADATA,
                        tus.HEADER_UPLOAD_CONCAT,
                        tus.HEADER_UPLOAD_EXPIRES,
                    ),
                }
            },
            errors=(404, 410, 412),
            parameters=(UPLOAD_ID, TUS_RESUMABLE),
            tag="tus",
        ),
        "patch": operation(
            "tus: bytes at the upload's offset; the last byte queues finalize",
            {
                204: {
                    "description": "Stored and fsynced up to the new Upload-Offset (on S3 up to the last whole chunk)",
                    "headers": tus_headers(tus.HEADER_UPLOAD_OFFSET, tus.HEADER_UPLOAD_EXPIRES),
                }
            },
            errors=(400, 403, 404, 409, 410, 412, 413, 415, 460, 507),
            parameters=(
                UPLOAD_ID,
                TUS_RESUMABLE,
                {
                    "name": tus.HEADER_UPLOAD_OFFSET,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "Must equal the upload's offset (409 otherwise)",
                },
                header_param(
                    tus.HEADER_UPLOAD_LENGTH,
                    {"type": "integer", "minimum": 0},
                    "Of an upload created with Upload-Defer-Length: its length, set once before the body is stored "
                    "(another value later is 400, below the offset 400, above Tus-Max-Size 413)",
                ),
                TUS_CHECKSUM,
            ),
            body={**TUS_BODY, "required": True},
            tag="tus",
        ),
        "delete": operation(
            "tus termination: abort the upload and free its bytes",
            {204: {"description": "Terminated; later requests get 410", "headers": tus_headers()}},
            errors=(404, 409, 410, 412),
            parameters=(UPLOAD_ID, TUS_RESUMABLE),
            tag="tus",
        ),
    },
}

PATHS: dict[str, dict[str, Schema]] = {
    **TUS_PATHS,
    HEALTH_PATH: {
        "get": operation(
            "Liveness for curl and load balancers (never rate limited)",
            {200: json_reply("The server is up", ref("Health"))},
            is_public=True,
            limited=False,
            tag="health",
        )
    },
    "/health/detailed": {
        "get": operation(
            "Every dependency of an upload checked (database, disk, limiter storage, jobs)",
            {
                200: json_reply("All checks passed", OBJECT),
                503: json_reply("A check failed; `reasons` says which", OBJECT),
            },
            limited=False,
            tag="health",
        )
    },
    "/metrics": {
        "get": operation(
            "Prometheus metrics (needs a key, as a bearer token)",
            {200: {"description": "Text exposition", "content": {"text/plain": {"schema": STRING}}}},
            limited=False,
            tag="health",
        )
    },
    OPENAPI_PATH: {
        "get": operation(
            "This document",
            {200: json_reply("OpenAPI 3 document", OBJECT)},
            is_public=True,
            tag="health",
        )
    },
    INIT_PATH: {
        "post": operation(
            "Start (or resume, or deduplicate) an upload",
            {
                200: json_reply("Resumed upload or already stored file", ref("InitReply")),
                201: json_reply("New upload", ref("InitReply")),
            },
            operation_id=INIT,
            errors=(400, 409, 413, 507),
            body=JSON_BODY,
        )
    },
    CHUNK_PATH: {
        "put": operation(
            "Store one chunk at its offset (idempotent, any order, parallel)",
            {
                200: json_reply("Chunk was already stored", ref("ChunkReply")),
                201: json_reply("Chunk stored durably", ref("ChunkReply")),
            },
            operation_id=CHUNK,
            errors=(400, 404, 409, 410, 411, 413, 507),
            parameters=(
                UPLOAD_ID,
                path_param("index", {"type": "integer", "minimum": 0}),
                header_param(HEADER_CHUNK_SHA256, HEX_SHA256, "sha256 of the chunk (the whole chunk for a piece)"),
                header_param(
                    HEADER_CHUNK_CRC32C,
                    HEX_CRC32C,
                    f"Instead of {HEADER_CHUNK_SHA256} (servers listing the {FEATURE_CHUNK_CRC32C} feature): "
                    "CRC-32C of the chunk, 8 hex digits, big-endian; a request naming both is refused",
                ),
                header_param(HEADER_CONTENT_MD5, BASE64_MD5, "base64 md5 of the chunk body (RFC 1864)"),
                header_param(
                    HEADER_CHUNK_OFFSET,
                    {"type": "integer", "minimum": 0},
                    f"Send a piece: the body is the chunk's bytes from this offset; needs {HEADER_PIECE_SHA256} "
                    f"(or {HEADER_PIECE_CRC32C}) and the whole chunk's {HEADER_CHUNK_SHA256} (or "
                    f"{HEADER_CHUNK_CRC32C}); at least {MIN_PIECE_SIZE} bytes unless it ends the chunk, which then "
                    "completes the chunk if all of it matches its checksum",
                ),
                header_param(HEADER_PIECE_SHA256, HEX_SHA256, f"sha256 of a piece's body (with {HEADER_CHUNK_OFFSET})"),
                header_param(HEADER_PIECE_CRC32C, HEX_CRC32C, "Or, instead: CRC-32C of the piece"),
            ),
            body={
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
        )
    },
    UPLOAD_PATH: {
        "get": operation(
            "Status: state, received and missing chunks",
            {200: json_reply("Upload status", ref("UploadReply"))},
            operation_id=STATUS,
            errors=(404, 410),
            parameters=(UPLOAD_ID,),
        ),
        "delete": operation(
            "Abort an upload and remove its part file",
            {200: json_reply("Aborted", ref("UploadReply"))},
            operation_id=ABORT,
            errors=(404, 409, 410),
            parameters=(UPLOAD_ID,),
        ),
    },
    FINALIZE_PATH: {
        "post": operation(
            "Verify and store; returns at once, poll the status",
            {
                200: json_reply("Already complete", ref("UploadReply")),
                202: json_reply("Verification queued (state finalizing)", ref("UploadReply")),
            },
            operation_id=FINALIZE,
            errors=(400, 404, 409, 410),
            parameters=(UPLOAD_ID,),
            body=FINALIZE_BODY,
        )
    },
    UPLOADS_PATH: {
        "get": operation(
            "Uploads of this key (an admin key: of every robot), newest first; not tus partial uploads joined "
            "into a final upload",
            {200: json_reply("One page of uploads", ref("UploadList"))},
            errors=(400,),
            parameters=(
                query_param(PARAM_LIMIT, {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_SIZE}, "Page size"),
                query_param(PARAM_OFFSET, {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_OFFSET}, "Page start"),
                query_param(PARAM_STATE, {"type": "string", "enum": ["", *STATES]}, "Filter (empty: all)"),
                query_param(PARAM_CLIENT, STRING, "Owner filter (admins)"),
            ),
        )
    },
    DOWNLOAD_PATH: {
        "get": operation(
            "Download a stored file (decompressed unless raw=1); one byte Range is answered with 206",
            {
                200: {"description": "The file", "content": BINARY},
                206: {
                    "description": "The requested byte range of the file",
                    "content": BINARY,
                    "headers": {HEADER_CONTENT_RANGE: {"schema": STRING, "description": "bytes START-END/LENGTH"}},
                },
            },
            operation_id=DOWNLOAD,
            errors=(400, 404, 409, 416),
            parameters=(
                UPLOAD_ID,
                query_param(PARAM_RAW, STRING, "1: the stored (compressed) bytes"),
                *RANGE_HEADERS,
            ),
        ),
        "delete": operation(
            "Delete a complete upload's stored file (admin key); the record stays as aborted/upload_deleted",
            {200: json_reply("Deleted; bytes_freed is 0 while another upload shares the file", ref("DeleteReply"))},
            errors=(403, 404, 409, 410, 507),
            parameters=(UPLOAD_ID,),
        ),
    },
    BAGS_PATH: {
        "get": operation(
            "The bag catalogue: bags of this key (an admin key: of every robot), sorted by start time",
            {200: json_reply("One page of bags", ref("BagList"))},
            errors=(400,),
            parameters=BAG_FILTERS,
            tag="bags",
        )
    },
    BAG_PATH: {
        "get": operation(
            "One bag with its topics and files",
            {200: json_reply("The bag", ref("Bag"))},
            errors=(404,),
            parameters=(BAG_ID,),
            tag="bags",
        ),
        "delete": operation(
            "Delete a bag: its uploads and their stored files (admin keys)",
            {200: json_reply("Deleted; `deleted` is the bag as it was", OBJECT)},
            errors=(403, 404),
            parameters=(BAG_ID,),
            tag="bags",
        ),
    },
    BAG_DOWNLOAD_PATH: {
        "get": operation(
            "The whole bag folder as one tar (`<bag>/<file>`), streamed",
            {
                200: {
                    "description": "An uncompressed tar (exact Content-Length)",
                    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                }
            },
            errors=(404, 409),
            parameters=(BAG_ID,),
            tag="bags",
        )
    },
    BAG_LINKS_PATH: {
        "post": operation(
            "Short-lived signed download links of a bag's files, and an Open in Foxglove link per MCAP file",
            {200: json_reply("Links valid until `expires` (epoch seconds, SIGNED_URL_TTL)", OBJECT)},
            errors=(404,),
            parameters=(BAG_ID,),
            tag="bags",
        )
    },
    SIGNED_DOWNLOAD_PATH: {
        "get": operation(
            "A stored file through a signed link (no key); one byte Range is answered with 206",
            {
                200: {"description": "The file", "content": BINARY},
                206: {"description": "The requested range", "content": BINARY},
            },
            errors=(403, 404, 409, 416),
            parameters=(
                path_param("upload_id"),
                query_param(PARAM_EXPIRES, {"type": "integer"}, "Expiry (epoch seconds) the link was signed for"),
                query_param(PARAM_SIGNATURE, STRING, "HMAC-SHA256 of the upload id and expiry"),
                *RANGE_HEADERS,
            ),
            is_public=True,
            limited=False,
            tag="bags",
        )
    },
    HEARTBEAT_PATH: {
        "post": operation(
            "A robot's status report; the reply carries operator commands",
            {200: json_reply("Status stored", ref("HeartbeatReply"))},
            errors=(400, 403, 413),
            parameters=(path_param("robot_id", ROBOT_ID),),
            body={"required": True, "content": {"application/json": {"schema": ref("HeartbeatRequest")}}},
            tag="robots",
        )
    },
    "/dashboard/": {
        "get": operation(
            "The dashboard page (signed-in browsers)",
            {200: {"description": "Page", "content": HTML}, 302: REDIRECT},
            is_public=True,
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/login": {
        method: operation(
            "Sign in with an admin key",
            {200: {"description": "Form", "content": HTML}, 302: REDIRECT}
            | {status: {"description": "Refused", "content": HTML} for status in (400, 401, 403)},
            is_public=True,
            limited=False,
            tag="dashboard",
        )
        for method in ("get", "post")
    },
    "/dashboard/logout": {
        "post": operation(
            "Sign out",
            {302: REDIRECT},
            errors=(400, 403),
            is_public=True,
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/state": {
        "get": operation(
            "Everything the dashboard shows, as JSON",
            {200: json_reply("Fleet state", OBJECT)},
            errors=(400,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/events": {
        "get": operation(
            "Live updates (server-sent events, ends after DASHBOARD_SSE_MAX_SECONDS)",
            {200: {"description": "Event stream (`event: state`, JSON `data`)", "content": {"text/event-stream": {}}}},
            errors=(400,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/recordings": {
        "get": operation(
            "The Recordings page: the bag catalogue (signed-in browsers)",
            {200: {"description": "Page", "content": HTML}, 302: REDIRECT},
            is_public=True,
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/bags": {
        "get": operation(
            f"`GET {BAGS_PATH}` for the signed-in dashboard (same filters and reply)",
            {200: json_reply("One page of bags", ref("BagList"))},
            errors=(400,),
            parameters=BAG_FILTERS,
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/bags/{bag_id}": {
        "get": operation(
            "One bag for the dashboard's detail panel",
            {200: json_reply("The bag", ref("Bag"))},
            errors=(404,),
            parameters=(BAG_ID,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/bags/{bag_id}/download": {
        "get": operation(
            "The whole bag as a streamed tar, for the dashboard",
            {200: {"description": "An uncompressed tar", "content": {"application/x-tar": {"schema": STRING}}}},
            errors=(404, 409),
            parameters=(BAG_ID,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/bags/{bag_id}/delete": {
        "post": operation(
            "Delete a bag from the dashboard (admins; the page's CSRF token in X-CSRF-Token)",
            {200: json_reply("Deleted", OBJECT)},
            errors=(403, 404),
            parameters=(BAG_ID,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/bags/{bag_id}/links": {
        "post": operation(
            f"`POST {BAG_LINKS_PATH}` for the dashboard (the page's CSRF token in X-CSRF-Token)",
            {200: json_reply("Signed links", OBJECT)},
            errors=(403, 404),
            parameters=(BAG_ID,),
            limited=False,
            tag="dashboard",
        )
    },
    "/dashboard/api/robots/{robot_id}/commands": {
        "post": operation(
            "Queue an operator command for a robot (admins)",
            {202: json_reply("Command queued", OBJECT)},
            errors=(400, 403),
            parameters=(path_param("robot_id", ROBOT_ID),),
            body={"required": True, "content": {"application/json": {"schema": ref("CommandRequest")}}},
            limited=False,
            tag="dashboard",
        )
    },
}


def openapi_path(rule: str) -> str:
    """A Flask rule (`/upload/<id>/chunk/<int:index>`) as an OpenAPI path (`/upload/{id}/chunk/{index}`)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def document(server_url: str | None = None, config: ServerConfig | None = None) -> dict[str, Any]:
    """The document for ``config``'s limits (the defaults without one)."""
    limits = config or ServerConfig()
    schemas = {
        **SCHEMAS,
        "InitRequest": init_request(limits),
        "FinalizeRequest": FINALIZE_REQUEST,
        "CommandRequest": COMMAND_REQUEST,
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "ROS2 bag upload server",
            "version": core.__version__,
            "description": "Resumable, verified chunked uploads of ROS2 bags. Every route but the public "
            "ones needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        },
        "paths": {openapi_path(path): ops for path, ops in PATHS.items()},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": HEADER_API_KEY},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


@public
def serve_document() -> Response:
    return jsonify(current_app.extensions["openapi_document"])


def init_app(app: Flask) -> None:
    app.extensions["openapi_document"] = document(config=app.extensions.get("server_config"))
    app.add_url_rule(OPENAPI_PATH, "openapi", serve_document, methods=["GET"])
