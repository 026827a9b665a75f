"""API keys of robots and admins: hashed at rest, checked in constant time, revocable without a restart.

A key reads ``rbk_<key id>_<secret>``. The key id finds the row; only the
sha256 of the secret is stored, and it is compared with ``hmac.compare_digest``.
The secret carries 256 bits of entropy, so a plain (unsalted, fast) hash is
enough: nothing can be brute-forced from a leaked table. Every lookup reads
the database, so ``keys revoke`` in one process takes effect in every gunicorn
worker at the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from core.server.identity import ANONYMOUS, Identity

KEY_PREFIX = "rbk"
KEYS_FILENAME = "keys.sqlite3"
EXTENSION = "api_keys"
# A robot name appears in logs, URLs (/robots/<name>/heartbeat) and file metadata.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")

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


class KeyStore:
    """Keys in an SQLite file (WAL) shared by every worker process on the host."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._open()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread and process: gthread workers serve requests on several
        # threads, and a connection inherited across gunicorn's fork must not be reused.
        pid, conn = getattr(self._local, "conn", (None, None))
        if conn is None or pid != os.getpid():
            conn = self._open()
            self._local.conn = (os.getpid(), conn)
        yield conn

    def create(self, name: str, *, admin: bool = False) -> NewKey:
        validate_name(name)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = KeyRecord(key_id=key_id, name=name, admin=admin, created_at=self._clock(), revoked_at=None)
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, name, admin, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, name, int(admin), _digest(secret), record.created_at),
            )
        return NewKey(record=record, token=f"{KEY_PREFIX}_{key_id}_{secret}")

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        query = "SELECT * FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        with self._connection() as conn:
            rows = conn.execute(query + " ORDER BY name, created_at").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, name: str, *, key_id: str | None = None) -> int:
        """Revoke every active key of ``name`` (or only ``key_id``); returns how many were revoked."""
        query = "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
        params: tuple[object, ...] = (self._clock(), name)
        if key_id is not None:
            query += " AND key_id = ?"
            params = (*params, key_id)
        with self._connection() as conn:
            return conn.execute(query, params).rowcount

    def identity_for(self, token: str) -> Identity | None:
        """The identity a presented key stands for, or None when it is malformed, unknown or revoked."""
        match = _KEY_PATTERN.match(token)
        if match is None:
            return None
        with self._connection() as conn:
            row = conn.execute(
                "SELECT name, admin, secret_sha256 FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
                (match["key_id"],),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["secret_sha256"], _digest(match["secret"])):
            return None
        return Identity(row["name"], admin=bool(row["admin"]))


def _record(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        admin=bool(row["admin"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def key_store_for(upload_dir: Path) -> KeyStore:
    """The key store every server process of one storage root shares."""
    return KeyStore(upload_dir / KEYS_FILENAME)


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
