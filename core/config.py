"""Configuration in one place: every setting is an environment variable with a documented default.

Nothing reads the environment at import time; ``ServerConfig.from_env()`` is
called by the app factory. DEPLOYMENT.md carries the same table. Each component
owns one dataclass below; parse errors name the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.protocol import DEFAULT_CHUNK_SIZE, Codec, GiB, KiB, MiB


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    msg = f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)"
    raise ConfigError(msg)


_SIZE_SUFFIXES = {"k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB, "b": 1}


def parse_size(name: str, raw: str) -> int:
    """Bytes from ``"5368709120"``, ``"8MiB"``, ``"5G"``; binary units."""
    text = raw.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = text[len(digits) :]
    try:
        number = float(digits)
        factor = _SIZE_SUFFIXES[suffix] if suffix else 1
    except (ValueError, KeyError) as err:
        msg = f"{name}={raw!r} is not a size (bytes, or a number with K/M/G/KiB/MiB/GiB)"
        raise ConfigError(msg) from err
    if number < 0:
        msg = f"{name}={raw!r} must not be negative"
        raise ConfigError(msg)
    return int(number * factor)


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError as err:
        msg = f"{name}={raw!r} is not an integer"
        raise ConfigError(msg) from err


def parse_float(name: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError as err:
        msg = f"{name}={raw!r} is not a number"
        raise ConfigError(msg) from err


def parse_list(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_field(name: str, raw: str, kind: str) -> Any:
    parsers = {
        "bool": parse_bool,
        "int": parse_int,
        "float": parse_float,
        "size": parse_size,
        "list": parse_list,
        "path": lambda _n, r: Path(r),
        "str": lambda _n, r: r,
        "optional_str": lambda _n, r: r or None,
        "optional_path": lambda _n, r: Path(r) if r else None,
        "codec": _parse_codec,
    }
    return parsers[kind](name, raw)


def _parse_codec(name: str, raw: str) -> Codec:
    try:
        return Codec(raw.strip().lower())
    except ValueError as err:
        msg = f"{name}={raw!r} is not one of {[c.value for c in Codec]}"
        raise ConfigError(msg) from err


def setting(default: Any, env: str, kind: str, doc: str) -> Any:
    """A dataclass field bound to an environment variable, its parser and its documentation."""
    return field(default=default, metadata={"env": env, "kind": kind, "doc": doc})


def load(cls: type[Any], environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """Build ``cls`` from the environment; ``overrides`` (by field name) win over it."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f.metadata.get("env")
        if name and name in env:
            values[f.name] = _parse_field(name, env[name], f.metadata["kind"])
    instance = cls(**values)
    return replace(instance, **overrides) if overrides else instance


def settings_table(cls: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows, for DEPLOYMENT.md and ``.env.example``."""
    rows = []
    for f in fields(cls):
        if "env" in f.metadata:
            default = f.default
            shown = ",".join(default) if isinstance(default, tuple) else getattr(default, "value", default)
            rows.append((f.metadata["env"], "" if shown is None else str(shown), f.metadata["doc"]))
    return rows


# STATE_STORE_URI schemes: SQLite (one host) or PostgreSQL through psycopg 3 (several hosts).
STATE_STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the upload server (``upload_server.py``)."""

    # --- storage and protocol (server core) ---
    upload_dir: Path = setting(
        Path("./uploads"), "UPLOAD_DIR", "path", "Storage root: state database, part files, stored files"
    )
    max_file_size: int = setting(5 * GiB, "MAX_FILE_SIZE", "size", "Largest accepted file")
    min_chunk_size: int = setting(
        64 * KiB, "MIN_CHUNK_SIZE", "size", "Smallest chunk size a client may choose (single-chunk files excepted)"
    )
    max_chunk_size: int = setting(64 * MiB, "MAX_CHUNK_SIZE", "size", "Largest chunk body accepted")
    default_chunk_size: int = setting(
        DEFAULT_CHUNK_SIZE, "DEFAULT_CHUNK_SIZE", "size", "Chunk size advertised to clients"
    )
    upload_ttl: float = setting(
        72 * 3600.0, "UPLOAD_TTL", "float", "Seconds an incomplete upload may stay idle before the sweep removes it"
    )
    sweep_interval: float = setting(
        300.0, "SWEEP_INTERVAL", "float", "Seconds between in-server sweeps (0 disables the in-server sweep)"
    )
    state_retention: float = setting(
        7 * 86400.0,
        "STATE_RETENTION",
        "float",
        "Seconds the sweep keeps answered commands, robots without heartbeats and joined tus partial uploads "
        "(chunk receipts: until finished)",
    )
    retention_days: float = setting(
        0.0,
        "RETENTION_DAYS",
        "float",
        "Delete stored files older than this many days in the sweep (0: keep forever, the default)",
    )
    min_free_disk: int = setting(
        2 * GiB,
        "MIN_FREE_DISK",
        "size",
        "POST /upload/init answers 507 while UPLOAD_DIR has less free space than this plus the file (0: off)",
    )
    compression_codec: Codec = setting(
        Codec.ZSTD, "COMPRESSION_CODEC", "codec", "Codec used when a client asks for compression: zstd or gzip"
    )
    compression_threshold: int = setting(
        10 * MiB, "COMPRESSION_THRESHOLD", "size", "Files smaller than this are stored uncompressed"
    )
    # Level 1: the only level measured faster than uploads arrive (BENCHMARKS.md, "Compression").
    compression_level: int = setting(1, "COMPRESSION_LEVEL", "int", "Compression level (gzip 1-9, zstd 1-22)")
    compression_threads: int = setting(
        0,
        "COMPRESSION_THREADS",
        "int",
        "zstd worker threads at finalize (0: compress on the hashing thread; -1: one per CPU)",
    )
    compression_min_saving: float = setting(
        0.05,
        "COMPRESSION_MIN_SAVING",
        "float",
        "Store a file uncompressed unless a compressed sample is at least this fraction smaller",
    )
    metadata_max_bytes: int = setting(
        16 * KiB, "METADATA_MAX_BYTES", "size", "Largest `metadata` object (as JSON) accepted by /upload/init"
    )
    background_jobs: bool = setting(
        True, "BACKGROUND_JOBS", "bool", "Run finalize jobs and the TTL sweep in a thread of each server process"
    )
    job_lease: float = setting(
        30.0,
        "JOB_LEASE",
        "float",
        "Seconds a finalize job stays claimed without renewal before another worker retries it",
    )
    job_max_attempts: int = setting(
        5, "JOB_MAX_ATTEMPTS", "int", "Failed finalize attempts before an upload fails (crashes, full disk: retried)"
    )
    # --- serving ---
    host: str = setting("0.0.0.0", "HOST", "str", "Bind address of `python3 upload_server.py`")
    port: int = setting(8080, "PORT", "int", "Port of `python3 upload_server.py`")
    ssl_cert: Path | None = setting(
        None, "SSL_CERT", "optional_path", "TLS certificate chain (PEM); HTTPS when set with SSL_KEY"
    )
    ssl_key: Path | None = setting(None, "SSL_KEY", "optional_path", "TLS private key (PEM)")
    log_level: str = setting("INFO", "LOG_LEVEL", "str", "Logging level")
    # --- protection (auth, rate limits, TLS, CORS, security headers) ---
    auth_enabled: bool = setting(
        True, "AUTH_ENABLED", "bool", "Require an API key on every route but /health (0 only for closed lab networks)"
    )
    ratelimit_enabled: bool = setting(True, "RATELIMIT_ENABLED", "bool", "Apply the rate limits")
    ratelimit_default: str = setting(
        "200 per day;50 per hour",
        "RATELIMIT_DEFAULT",
        "str",
        "Limits per client address of every route without its own (the seed's); `;`-separated",
    )
    ratelimit_init: str = setting("20 per hour", "RATELIMIT_INIT", "str", "POST /upload/init per client address")
    ratelimit_chunk: str = setting(
        "100 per minute", "RATELIMIT_CHUNK", "str", "Chunk PUTs per client address (100/min x 8 MiB = 14 MB/s)"
    )
    ratelimit_status: str = setting(
        "300 per minute", "RATELIMIT_STATUS", "str", "GET /upload/<id> per client address (resume checks, polling)"
    )
    ratelimit_finalize: str = setting(
        "60 per hour", "RATELIMIT_FINALIZE", "str", "POST /upload/<id>/finalize per client address (3x the init limit)"
    )
    ratelimit_list: str = setting(
        "120 per minute", "RATELIMIT_LIST", "str", "GET /uploads per client (dashboards and admin scripts)"
    )
    # Per API key: sized from the recorder's rates (2 uploads per split; 10 s demo splits = 12/min) with 5x headroom.
    ratelimit_key_default: str = setting(
        "120 per minute", "RATELIMIT_KEY_DEFAULT", "str", "Per API key: every route without its own limit"
    )
    ratelimit_key_init: str = setting(
        "60 per minute", "RATELIMIT_KEY_INIT", "str", "Per API key: POST /upload/init (a 10 s split needs 12/min)"
    )
    ratelimit_key_chunk: str = setting(
        "600 per minute", "RATELIMIT_KEY_CHUNK", "str", "Per API key: chunk PUTs (600/min x 8 MiB = 84 MB/s)"
    )
    ratelimit_key_status: str = setting(
        "600 per minute", "RATELIMIT_KEY_STATUS", "str", "Per API key: GET /upload/<id> (finalize polling)"
    )
    ratelimit_key_finalize: str = setting(
        "60 per minute", "RATELIMIT_KEY_FINALIZE", "str", "Per API key: POST /upload/<id>/finalize (one per upload)"
    )
    ratelimit_unauthenticated: str = setting(
        "30 per minute",
        "RATELIMIT_UNAUTHENTICATED",
        "str",
        "Requests with a missing or wrong key per client address; then 429 instead of 401 (valid keys never count)",
    )
    ratelimit_storage_uri: str = setting(
        "memory://",
        "RATELIMIT_STORAGE_URI",
        "str",
        "Where counters live: memory:// (per process) or redis://host:6379/0 (shared by all workers and hosts)",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "TRUSTED_PROXIES",
        "list",
        "Proxies whose X-Forwarded-For/-Proto is believed: addresses or CIDRs (e.g. 127.0.0.1), or a hop count (1)",
    )
    cors_origins: tuple[str, ...] = setting(
        (), "CORS_ORIGINS", "list", "Browser origins allowed to call the API cross-origin (empty: none)"
    )
    signed_url_ttl: float = setting(
        900.0, "SIGNED_URL_TTL", "float", "Seconds a signed download link (Open in Foxglove) stays valid"
    )
    download_cors_origins: tuple[str, ...] = setting(
        ("https://app.foxglove.dev",),
        "DOWNLOAD_CORS_ORIGINS",
        "list",
        "Browser origins that may fetch signed download links cross-origin (Foxglove; empty: none)",
    )
    foxglove_url: str = setting(
        "https://app.foxglove.dev/~/view",
        "FOXGLOVE_URL",
        "str",
        "Foxglove viewer the dashboard's Open in Foxglove link points at (it fetches the signed link)",
    )
    max_json_size: int = setting(
        64 * KiB, "MAX_JSON_SIZE", "size", "Largest request body on every route but chunk PUTs (MAX_CHUNK_SIZE)"
    )
    # --- dashboard and robot heartbeats ---
    secret_key: str | None = setting(
        None,
        "SECRET_KEY",
        "optional_str",
        "Signs dashboard session cookies; unset: generated once and kept in UPLOAD_DIR/.secret_key (0600)",
    )
    robot_offline_after: float = setting(
        30.0, "ROBOT_OFFLINE_AFTER", "float", "Seconds without a heartbeat after which a robot shows as offline"
    )
    heartbeat_rate_limit: str = setting(
        "120 per minute", "HEARTBEAT_RATE_LIMIT", "str", "Heartbeats each robot may send (separate from upload limits)"
    )
    heartbeat_interval: float = setting(
        5.0, "HEARTBEAT_INTERVAL", "float", "Seconds between robot heartbeats the server asks for in its reply"
    )
    command_ttl: float = setting(
        300.0, "COMMAND_TTL", "float", "Seconds an operator command waits for its robot before it expires"
    )
    dashboard_session_hours: float = setting(
        12.0, "DASHBOARD_SESSION_HOURS", "float", "Lifetime of a dashboard sign-in"
    )
    dashboard_signin_limit: str = setting(
        "10 per minute",
        "DASHBOARD_SIGNIN_RATE_LIMIT",
        "str",
        "Dashboard sign-in attempts per client address (kept in RATELIMIT_STORAGE_URI; off with RATELIMIT_ENABLED=0)",
    )
    sse_max_seconds: float = setting(
        55.0, "DASHBOARD_SSE_MAX_SECONDS", "float", "Each live-update stream ends after this long (the page reconnects)"
    )
    sse_interval: float = setting(
        1.0,
        "DASHBOARD_SSE_INTERVAL",
        "float",
        "Seconds between live-update checks; each process builds one snapshot per interval for all its viewers",
    )
    sse_max_streams: int = setting(
        2,
        "DASHBOARD_SSE_MAX_STREAMS",
        "int",
        "Live-update streams per server process (each holds a thread); more viewers poll every 5 s instead",
    )
    dashboard_upload_streams: int = setting(
        1,
        "DASHBOARD_UPLOAD_STREAMS",
        "int",
        "Parallel tus partial uploads per file from the dashboard's Upload a bag (above 1: local-disk blobs only, "
        "and no per-PATCH Upload-Checksum; the whole-file sha256 still verifies)",
    )
    # --- deployment (metrics, logging, backups, scale-out) ---
    log_format: str = setting(
        "text", "LOG_FORMAT", "str", "Log lines as `text` (the seed's format) or `json` (one object per line)"
    )
    metrics_enabled: bool = setting(True, "METRICS_ENABLED", "bool", "Serve Prometheus metrics at GET /metrics")
    health_min_free: int = setting(
        1 * GiB, "HEALTH_MIN_FREE", "size", "/health/detailed reports degraded below this much free space in UPLOAD_DIR"
    )
    state_store_uri: str = setting(
        "",
        "STATE_STORE_URI",
        "str",
        "State of uploads, jobs, robots, keys, counters: empty = SQLite in UPLOAD_DIR; postgresql://user@host/db",
    )
    state_pool_size: int = setting(
        5, "STATE_POOL_SIZE", "int", "PostgreSQL connections each server process keeps open (gthread threads + 1)"
    )
    blob_store_uri: str = setting(
        "",
        "BLOB_STORE_URI",
        "str",
        "Chunks and stored files: empty = UPLOAD_DIR, file:///path, or s3://BUCKET/PREFIX (endpoint, keys: AWS_* vars)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        config: ServerConfig = load(cls, environ, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        if self.min_chunk_size > self.max_chunk_size:
            msg = f"MIN_CHUNK_SIZE ({self.min_chunk_size}) exceeds MAX_CHUNK_SIZE ({self.max_chunk_size})"
            raise ConfigError(msg)
        if not self.min_chunk_size <= self.default_chunk_size <= self.max_chunk_size:
            msg = "DEFAULT_CHUNK_SIZE must lie between MIN_CHUNK_SIZE and MAX_CHUNK_SIZE"
            raise ConfigError(msg)
        if bool(self.ssl_cert) != bool(self.ssl_key):
            msg = "SSL_CERT and SSL_KEY must be set together"
            raise ConfigError(msg)
        if self.compression_threads < -1:
            msg = f"COMPRESSION_THREADS={self.compression_threads} must be -1 (one per CPU), 0 or a thread count"
            raise ConfigError(msg)
        if self.log_format not in ("text", "json"):
            msg = f"LOG_FORMAT={self.log_format!r} is not one of ['text', 'json']"
            raise ConfigError(msg)
        if self.state_store_uri and not self.state_store_uri.startswith(STATE_STORE_SCHEMES):
            msg = f"STATE_STORE_URI={self.state_store_uri!r} must be empty, sqlite:///<path> or postgresql://…"
            raise ConfigError(msg)
        if self.dashboard_upload_streams < 1:
            msg = f"DASHBOARD_UPLOAD_STREAMS must be at least 1, got {self.dashboard_upload_streams}"
            raise ConfigError(msg)
        if self.state_pool_size < 1:
            msg = f"STATE_POOL_SIZE must be at least 1, got {self.state_pool_size}"
            raise ConfigError(msg)
        if self.blob_store_uri and not self.blob_store_uri.startswith(("file:///", "s3://")):
            msg = f"BLOB_STORE_URI={self.blob_store_uri!r} must be empty, file:///path or s3://BUCKET/PREFIX"
            raise ConfigError(msg)


# --- robot upload client (core/network_manager.py) ---
CLIENT_RETENTIONS = ("keep", "delete", "move")
STATE_DIR_NAME = "ros2-bag-upload"


@dataclass(frozen=True)
class ClientConfig:
    """Settings of the robot's upload client; ``NetworkManager`` arguments and CLI options override them."""

    upload_url: str = setting(
        "http://localhost:8080/upload", "UPLOAD_URL", "str", "Server root + /upload, as in the seed guide"
    )
    api_key: str | None = setting(
        None, "UPLOAD_API_KEY", "optional_str", "The robot's API key, sent as `Authorization: Bearer <key>`"
    )
    state_dir: Path | None = setting(
        None,
        "NETWORK_MANAGER_STATE_DIR",
        "optional_path",
        "Upload journal folder (default `$XDG_STATE_HOME/ros2-bag-upload` or `~/.local/state/ros2-bag-upload`)",
    )
    max_concurrent_uploads: int = setting(2, "UPLOAD_MAX_CONCURRENT", "int", "Bags uploaded at the same time")
    chunk_parallelism: int = setting(1, "UPLOAD_CHUNK_PARALLELISM", "int", "Chunks of one bag sent in parallel")
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, "UPLOAD_CHUNK_SIZE", "size", "Chunk size proposed at init")
    bandwidth_limit: int = setting(
        0, "UPLOAD_BANDWIDTH_LIMIT", "size", "Bytes/s shared by all uploads of this robot (0 = unlimited)"
    )
    retention: str = setting(
        "keep",
        "UPLOAD_RETENTION",
        "str",
        "After a verified upload: keep, delete, or move the bag to UPLOAD_UPLOADED_DIR",
    )
    uploaded_dir: Path | None = setting(
        None,
        "UPLOAD_UPLOADED_DIR",
        "optional_path",
        "Where `move` puts uploaded bags (default `<bag folder>/uploaded`)",
    )
    ca_bundle: Path | None = setting(
        None, "UPLOAD_CA_BUNDLE", "optional_path", "CA certificate(s) to trust for a server with a private CA"
    )
    journal_retention: float = setting(
        7 * 24 * 3600.0,
        "UPLOAD_JOURNAL_RETENTION",
        "float",
        "Seconds a complete upload stays in the robot's journal before it is pruned (failed ones stay until purged)",
    )
    heartbeat_recent: int = setting(
        20, "UPLOAD_HEARTBEAT_RECENT", "int", "Ended uploads the heartbeat carries besides the active ones"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        config: ClientConfig = load(cls, environ, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        if self.retention not in CLIENT_RETENTIONS:
            msg = f"UPLOAD_RETENTION={self.retention!r} is not one of {list(CLIENT_RETENTIONS)}"
            raise ConfigError(msg)
        if self.max_concurrent_uploads < 1 or self.chunk_parallelism < 1:
            msg = "UPLOAD_MAX_CONCURRENT and UPLOAD_CHUNK_PARALLELISM must be at least 1"
            raise ConfigError(msg)

    def resolved_state_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """The journal folder: the setting, else the per-user XDG state folder."""
        if self.state_dir is not None:
            return self.state_dir
        env = os.environ if environ is None else environ
        base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
        return base / STATE_DIR_NAME


# --- recorder (ros_nodes/: the robot side that writes bags) ---
RECORDER_STORAGES = ("mcap", "sqlite3")
RECORDER_COMPRESSIONS = ("none", "zstd")
RECORDER_COMPRESSION_MODES = ("storage", "file", "message")


@dataclass(frozen=True)
class RecorderConfig:
    """Settings of the recording core (``ros_nodes``); CLI options of the recorder entry points override them."""

    output_dir: Path = setting(Path("./bags"), "RECORDER_OUTPUT_DIR", "path", "Folder the recorder writes bags into")
    robot_id: str = setting("robot", "ROBOT_ID", "str", "Robot name stamped on every bag and upload")
    storage: str = setting("mcap", "RECORDER_STORAGE", "str", "Bag storage plugin: mcap or sqlite3")
    bag_version: int = setting(
        8, "RECORDER_BAG_VERSION", "int", "rosbag2 metadata version: 8 (Humble readers) or 9 (Jazzy and later)"
    )
    ros_distro: str = setting(
        "humble", "RECORDER_ROS_DISTRO", "str", "Message definitions recorded for the generated types (humble, jazzy…)"
    )
    compression: str = setting("none", "RECORDER_COMPRESSION", "str", "Bag compression: none or zstd")
    compression_mode: str = setting(
        "storage", "RECORDER_COMPRESSION_MODE", "str", "zstd mode: storage (MCAP chunks), file or message"
    )
    max_bag_size: int = setting(
        1 * GiB, "RECORDER_MAX_BAG_SIZE", "size", "Split when a bag's message bytes reach this (0: no size split)"
    )
    max_bag_duration: float = setting(
        300.0, "RECORDER_MAX_BAG_DURATION", "float", "Split after this many seconds of messages (0: no time split)"
    )
    topics: tuple[str, ...] = setting((), "RECORDER_TOPICS", "list", "Topics to record (empty with no regex: all)")
    include_regex: str = setting("", "RECORDER_INCLUDE_REGEX", "str", "Also record topics matching this regex")
    exclude_regex: str = setting("", "RECORDER_EXCLUDE_REGEX", "str", "Never record topics matching this regex")
    buffer_size: int = setting(
        256 * MiB, "RECORDER_BUFFER_SIZE", "size", "Bytes queued between receive and disk; overflow is counted"
    )
    min_free_disk: int = setting(
        1 * GiB, "RECORDER_MIN_FREE_DISK", "size", "Refuse to start / stop cleanly below this much free disk"
    )
    keep_bags: int = setting(0, "RECORDER_KEEP_BAGS", "int", "Keep at most N bags locally (0: no limit)")
    keep_bytes: int = setting(0, "RECORDER_KEEP_BYTES", "size", "Keep at most N bytes of bags locally (0: no limit)")
    upload_priority: int = setting(5, "RECORDER_UPLOAD_PRIORITY", "int", "NetworkManager priority of each split")
    discovery_interval: float = setting(
        2.0, "RECORDER_DISCOVERY_INTERVAL", "float", "Seconds between topic discoveries of the rclpy node"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RecorderConfig:
        config: RecorderConfig = load(cls, environ, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        choices = {
            "RECORDER_STORAGE": (self.storage, RECORDER_STORAGES),
            "RECORDER_COMPRESSION": (self.compression, RECORDER_COMPRESSIONS),
            "RECORDER_COMPRESSION_MODE": (self.compression_mode, RECORDER_COMPRESSION_MODES),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                msg = f"{name}={value!r} is not one of {list(allowed)}"
                raise ConfigError(msg)
        if self.bag_version not in (8, 9):
            msg = f"RECORDER_BAG_VERSION={self.bag_version} must be 8 or 9"
            raise ConfigError(msg)
        if self.storage == "sqlite3" and self.compression == "zstd" and self.compression_mode == "storage":
            msg = "RECORDER_COMPRESSION_MODE=storage needs RECORDER_STORAGE=mcap (sqlite3: use file or message)"
            raise ConfigError(msg)
        if self.max_bag_size < 0 or self.max_bag_duration < 0:
            msg = "RECORDER_MAX_BAG_SIZE and RECORDER_MAX_BAG_DURATION must not be negative"
            raise ConfigError(msg)
