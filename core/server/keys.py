"""API keys of robots and admins: hashed at rest, checked in constant time, revocable without a restart.

A key reads ``rbk_<key id>_<secret>``. The key id finds the stored entry; only the
sha256 of the secret is stored, and it is compared with ``hmac.compare_digest``.
The secret carries 256 bits of entropy, so a plain (unsalted, fast) hash is
enough: nothing can be brute-forced from a leaked table. Every lookup reads the
store, so ``keys revoke`` in one process takes effect in every gunicorn worker,
on every host, at the next request. The keys live in the state database
(SQLite in UPLOAD_DIR, or the PostgreSQL of ``STATE_STORE_URI`` every host shares).
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
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import Engine, bindparam, select, update

from core.config import ServerConfig
from core.server import db
from core.server.db import api_keys, upsert
from core.server.identity import ANONYMOUS, Identity

KEY_PREFIX = "rbk"
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


def parse_token(token: str) -> tuple[str, str] | None:
    """The (key id, secret) of a well-formed key, or None. The secret may itself contain ``_``."""
    match = _KEY_PATTERN.match(token)
    return None if match is None else (match["key_id"], match["secret"])


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
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        key = self._find_active(key_id)
        if key is None or not hmac.compare_digest(key.secret_sha256, _digest(secret)):
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


# Built once: every authenticated request runs it, and building a statement costs more than running it.
_ACTIVE_KEY = db.DirectRead(
    select(api_keys.c.name, api_keys.c.admin, api_keys.c.secret_sha256).where(
        api_keys.c.key_id == bindparam("key_id"), api_keys.c.revoked_at.is_(None)
    )
)


class SQLKeyStore(KeyStore):
    """Keys in the ``api_keys`` table of the state database, shared by every worker and host."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.engine = engine

    def _insert(self, record: KeyRecord, secret_sha256: str) -> bool:
        with db.write(self.engine) as conn:
            stmt = upsert(conn, api_keys).values(
                key_id=record.key_id,
                name=record.name,
                admin=record.admin,
                secret_sha256=secret_sha256,
                created_at=record.created_at,
            )
            inserted = stmt.on_conflict_do_nothing(index_elements=["key_id"]).returning(api_keys.c.key_id)
            return conn.execute(inserted).first() is not None

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        c = api_keys.c
        query = select(c.key_id, c.name, c.admin, c.created_at, c.revoked_at).order_by(c.name, c.created_at)
        if not include_revoked:
            query = query.where(c.revoked_at.is_(None))
        with db.read(self.engine) as conn:
            rows = conn.execute(query).all()
        return [KeyRecord(row[0], row[1], bool(row[2]), row[3], row[4]) for row in rows]

    def _revoke(self, name: str, key_id: str | None, now: float) -> int:
        c = api_keys.c
        query = update(api_keys).where(c.name == name, c.revoked_at.is_(None)).values(revoked_at=now)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        with db.write(self.engine) as conn:
            return int(conn.execute(query).rowcount)

    def _find_active(self, key_id: str) -> _ActiveKey | None:
        row = _ACTIVE_KEY.first(self.engine, key_id=key_id)
        return None if row is None else _ActiveKey(row["name"], bool(row["admin"]), row["secret_sha256"])

    def close(self) -> None:
        self.engine.dispose()


def key_store_for(upload_dir: Path) -> SQLKeyStore:
    """The key store of one storage root's embedded SQLite state (tools and tests on one host)."""
    return open_key_store(ServerConfig(upload_dir=upload_dir))


def open_key_store(config: ServerConfig, engine: Engine | None = None) -> KeyStore:
    """Keys in the state database of STATE_STORE_URI (``engine`` when the app has opened it already)."""
    return SQLKeyStore(engine or db.checked_engine(config))


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
