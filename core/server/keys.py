"""API keys of robots and admins: hashed at rest, checked in constant time, revocable without a restart.

A key reads ``rbk_<key id>_<secret>``. The key id finds the stored entry; only the
sha256 of the secret is stored, and it is compared with ``hmac.compare_digest``.
The secret carries 256 bits of entropy, so a plain (unsalted, fast) hash is
enough: nothing can be brute-forced from a leaked table. Every lookup reads the
store, so ``keys revoke`` in one process takes effect in every gunicorn worker,
on every host, at the next request. The store is SQLite in UPLOAD_DIR (one host)
or, with ``STATE_STORE_URI=redis://…``, the Redis every app server shares.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import redis
from flask import Flask, current_app
from flask.cli import AppGroup

from core.config import ServerConfig
from core.server.identity import ANONYMOUS, Identity
from core.server.redis_store import PREFIX, connect
from core.sqlite import ThreadConnections, transaction

KEY_PREFIX = "rbk"
KEYS_FILENAME = "keys.sqlite3"
EXTENSION = "api_keys"
# A robot name appears in logs, URLs (/robots/<name>/heartbeat) and file metadata.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
# A fresh key id colliding with a stored one (48 random bits) is all but impossible; retrying is cheaper than failing.
_CREATE_ATTEMPTS = 3


class KeyStoreError(Exception):
    """A key operation cannot be done (bad name, unknown name)."""


@dataclass(frozen=True)
class KeyRecord:
    """One stored key, without its secret."""

    key_id: str
    name: str
    admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: ``token`` is shown once and never stored."""

    record: KeyRecord
    token: str


@dataclass(frozen=True)
class _ActiveKey:
    """What a lookup needs of an unrevoked key: who it is and the hash to compare against."""

    name: str
    admin: bool
    secret_sha256: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        msg = f"key name {name!r} must be 1-64 characters of letters, digits, '.', '_', '-' (starting alphanumeric)"
        raise KeyStoreError(msg)
    if name == ANONYMOUS.name:
        msg = f"key name {name!r} is reserved for unauthenticated mode"
        raise KeyStoreError(msg)
    return name


class KeyStore(abc.ABC):
    """Keys by id, stored as sha256 of their secret; backends only store and find, this class decides.

    Generating secrets and comparing them live here, once, so that every backend
    keeps the same guarantees (never the secret at rest, constant-time comparison).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def create(self, name: str, *, admin: bool = False) -> NewKey:
        validate_name(name)
        for _ in range(_CREATE_ATTEMPTS):
            secret = secrets.token_urlsafe(32)
            record = KeyRecord(secrets.token_hex(6), name, admin, created_at=self._clock(), revoked_at=None)
            if self._insert(record, _digest(secret)):
                return NewKey(record=record, token=f"{KEY_PREFIX}_{record.key_id}_{secret}")
        msg = f"could not find a free key id in {_CREATE_ATTEMPTS} attempts"
        raise KeyStoreError(msg)

    def identity_for(self, token: str) -> Identity | None:
        """The identity a presented key stands for, or None when it is malformed, unknown or revoked."""
        match = _KEY_PATTERN.match(token)
        if match is None:
            return None
        key = self._find_active(match["key_id"])
        if key is None or not hmac.compare_digest(key.secret_sha256, _digest(match["secret"])):
            return None
        return Identity(key.name, admin=key.admin)

    def revoke(self, name: str, *, key_id: str | None = None) -> int:
        """Revoke every active key of ``name`` (or only ``key_id``); returns how many were revoked."""
        return self._revoke(name, key_id, self._clock())

    @abc.abstractmethod
    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        """Keys ordered by name, then creation time; revoked ones only when asked."""

    @abc.abstractmethod
    def _insert(self, record: KeyRecord, secret_sha256: str) -> bool:
        """Store a new key; False (and nothing stored) when its key id is taken."""

    @abc.abstractmethod
    def _find_active(self, key_id: str) -> _ActiveKey | None:
        """The unrevoked key with this id, read fresh from the shared store."""

    @abc.abstractmethod
    def _revoke(self, name: str, key_id: str | None, now: float) -> int:
        """Mark ``name``'s active keys (or only ``key_id``) revoked at ``now``; how many were."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    admin INTEGER NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys (name);
"""


class SQLiteKeyStore(KeyStore):
    """Keys in an SQLite file (WAL) shared by every worker process on one host."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # gthread workers serve requests on several threads: one connection each.
        self._connections = ThreadConnections(path, timeout=10.0, synchronous="FULL")
        self._connections.get().executescript(_SCHEMA)

    def _insert(self, record: KeyRecord, secret_sha256: str) -> bool:
        with transaction(self._connections.get()) as db:
            inserted = db.execute(
                "INSERT INTO api_keys (key_id, name, admin, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key_id) DO NOTHING",
                (record.key_id, record.name, int(record.admin), secret_sha256, record.created_at),
            ).rowcount
        return inserted == 1

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        query = "SELECT key_id, name, admin, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        rows = self._connections.get().execute(query + " ORDER BY name, created_at").fetchall()
        return [KeyRecord(row[0], row[1], bool(row[2]), row[3], row[4]) for row in rows]

    def _revoke(self, name: str, key_id: str | None, now: float) -> int:
        query = "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
        params: tuple[object, ...] = (now, name)
        if key_id is not None:
            query += " AND key_id = ?"
            params = (*params, key_id)
        with transaction(self._connections.get()) as db:
            return db.execute(query, params).rowcount

    def _find_active(self, key_id: str) -> _ActiveKey | None:
        row = (
            self._connections.get()
            .execute(
                "SELECT name, admin, secret_sha256 FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
            )
            .fetchone()
        )
        return None if row is None else _ActiveKey(row[0], bool(row[1]), row[2])

    def close(self) -> None:
        self._connections.close()


# KEYS: key, all, by_name; ARGV: key_id, name, admin, secret_sha256, created_at
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'admin', ARGV[3], 'secret_sha256', ARGV[4], 'created_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS: by_name, key_prefix; ARGV: now, key_id ('' for all of the name's keys)
_REVOKE = """
local ids = redis.call('SMEMBERS', KEYS[1])
local revoked = 0
for _, id in ipairs(ids) do
  if (ARGV[2] == '' or ARGV[2] == id) and redis.call('HEXISTS', KEYS[2] .. id, 'revoked_at') == 0 then
    redis.call('HSET', KEYS[2] .. id, 'revoked_at', ARGV[1])
    revoked = revoked + 1
  end
end
return revoked
"""


class RedisKeyStore(KeyStore):
    """Keys in the Redis every app server shares: one hash per key, indexed by creation and by name.

    Revocation is one Lua script, so it is atomic and visible to every host at
    the next lookup; keys never expire (a revoked key stays listed, like in SQLite).
    """

    def __init__(self, client: redis.Redis, prefix: str = PREFIX, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.redis = client
        self._key = f"{prefix}apikey:"
        self._all = f"{prefix}apikeys"
        self._by_name = f"{prefix}apikeys:name:"
        self._create = client.register_script(_CREATE)
        self._revoke_script = client.register_script(_REVOKE)

    def _insert(self, record: KeyRecord, secret_sha256: str) -> bool:
        keys = [self._key + record.key_id, self._all, self._by_name + record.name]
        args = [record.key_id, record.name, int(record.admin), secret_sha256, repr(record.created_at)]
        return bool(self._create(keys=keys, args=args))

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        ids = [raw.decode() for raw in self.redis.zrange(self._all, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.hmget(self._key + key_id, "name", "admin", "created_at", "revoked_at")
        records = [
            KeyRecord(key_id, name.decode(), admin == b"1", float(created), float(revoked) if revoked else None)
            for key_id, (name, admin, created, revoked) in zip(ids, pipe.execute(), strict=True)
            if name is not None
        ]
        return sorted((r for r in records if include_revoked or r.active), key=lambda r: (r.name, r.created_at))

    def _revoke(self, name: str, key_id: str | None, now: float) -> int:
        return int(self._revoke_script(keys=[self._by_name + name, self._key], args=[repr(now), key_id or ""]))

    def _find_active(self, key_id: str) -> _ActiveKey | None:
        name, admin, digest, revoked = self.redis.hmget(
            self._key + key_id, "name", "admin", "secret_sha256", "revoked_at"
        )
        if name is None or digest is None or revoked is not None:
            return None
        return _ActiveKey(name.decode(), admin == b"1", digest.decode())

    def close(self) -> None:
        self.redis.close()


def key_store_for(upload_dir: Path) -> SQLiteKeyStore:
    """The embedded key store of one storage root, shared by every server process of one host."""
    return SQLiteKeyStore(upload_dir / KEYS_FILENAME)


def open_key_store(config: ServerConfig) -> KeyStore:
    """Redis when STATE_STORE_URI is set (like the upload state and robot status), else SQLite in UPLOAD_DIR."""
    if config.state_store_uri:
        return RedisKeyStore(connect(config.state_store_uri))
    return key_store_for(config.upload_dir)


def key_store(app: Flask | None = None) -> KeyStore:
    store: KeyStore = (app or current_app).extensions[EXTENSION]
    return store


# --- `flask --app upload_server keys …` ------------------------------------------------
keys_cli = AppGroup("keys", help="Create, list and revoke API keys of robots and admins.")


def _fail(err: KeyStoreError) -> None:
    raise click.ClickException(str(err)) from err


@keys_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="The key may see and manage every robot's uploads.")
def create_command(name: str, admin: bool) -> None:
    """Create a key for NAME; it is printed once, alone on the last line."""
    try:
        new = key_store().create(name, admin=admin)
    except KeyStoreError as err:
        _fail(err)
        return
    role = "admin" if admin else "robot"
    click.echo(f"Created {role} key {new.record.key_id} for {name!r}. Store it now: it cannot be shown again.")
    click.echo(new.token)


@keys_cli.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def list_command(include_revoked: bool) -> None:
    """List keys (names, roles, ids, dates); secrets are never stored, so never shown."""
    records = key_store().list(include_revoked=include_revoked)
    click.echo(f"{'NAME':<24} {'ROLE':<6} {'KEY ID':<12} {'CREATED (UTC)':<20} REVOKED (UTC)")
    for rec in records:
        revoked = _utc(rec.revoked_at) if rec.revoked_at else "-"
        role = "admin" if rec.admin else "robot"
        click.echo(f"{rec.name:<24} {role:<6} {rec.key_id:<12} {_utc(rec.created_at):<20} {revoked}")


@keys_cli.command("revoke")
@click.argument("name")
@click.option("--key-id", help="Revoke only this key of NAME (key rotation); default: all of NAME's keys.")
def revoke_command(name: str, key_id: str | None) -> None:
    """Revoke NAME's keys; every server process refuses them from the next request on."""
    count = key_store().revoke(name, key_id=key_id)
    if count == 0:
        raise click.ClickException(f"no active key for {name!r}" + (f" with id {key_id}" if key_id else ""))
    click.echo(f"Revoked {count} key(s) of {name!r}.")


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
