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
    compression_codec: Codec = setting(
        Codec.ZSTD, "COMPRESSION_CODEC", "codec", "Codec used when a client asks for compression: zstd or gzip"
    )
    compression_threshold: int = setting(
        10 * MiB, "COMPRESSION_THRESHOLD", "size", "Files smaller than this are stored uncompressed"
    )
    compression_level: int = setting(6, "COMPRESSION_LEVEL", "int", "Compression level (gzip 1-9, zstd 1-22)")
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
    # --- dashboard and robot heartbeats ---
    # --- deployment (metrics, logging, backups, scale-out) ---

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
