"""Backups of the storage root: consistent database snapshots plus every stored file, with a sha256 manifest.

``flask --app upload_server backup create DEST`` runs while the server serves:

1. every SQLite database at the root of UPLOAD_DIR is copied with SQLite's online
   backup API (a consistent snapshot, whatever the workers write meanwhile);
2. then the files (``store/`` and the ``parts/`` of unfinished uploads) are copied.

That order is what makes the pair consistent: a chunk or a stored file is on disk
before the database records it, so everything the snapshot refers to already exists
when the files are copied afterwards. Part files are copied sparsely (holes stay
holes), and with ``--timestamped`` a stored file unchanged since the previous
snapshot is hard-linked instead of copied: stored files never change once written.
A backup is written to ``DEST.partial`` and renamed when complete, so a crash never
leaves something that looks like a finished backup.

``backup restore SRC`` fills an empty UPLOAD_DIR, checking every byte against the
manifest; any mismatch stops the restore with the file's name.

With ``STATE_STORE_URI=postgresql://…`` the state is not in UPLOAD_DIR: step 1 is then
``pg_dump --format=custom`` of that database into ``state.pgdump`` (one consistent
snapshot, taken before the files for the same reason), and ``restore`` loads it with
``pg_restore`` into the (empty) database STATE_STORE_URI names.

With ``BLOB_STORE_URI=s3://…`` the stored files live in the bucket: step 2 copies every
object of its ``store/`` area into the backup's ``store/`` (same names, same manifest),
and a restore writes them back into the bucket. Unfinished uploads' multipart parts
are not copied; after a restore into another bucket those uploads answer 410
``part_missing`` and the robots send them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import psycopg
from flask import Flask
from flask.cli import AppGroup

from core.config import ServerConfig
from core.server.blobs import BlobStore, LocalBlobStore, open_blob_store
from core.server.blobs.local import fsync_dir

log = logging.getLogger("upload_server.backup")

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
# Locks, staging output and health probes are transient: meaningless in a copy.
TRANSIENT_DIRS = frozenset({"locks", "staging", ".health"})
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
IMMUTABLE_DIR = "store"
SNAPSHOT_NAME = re.compile(r"^ros2-upload-\d{8}T\d{6}Z$")
BLOCK = 1024 * 1024
PG_DUMP = "state.pgdump"
PG_DUMP_KIND = "pg_dump"


class BackupError(Exception):
    """A backup or restore cannot proceed; the message says which path and why."""


@dataclass(frozen=True)
class Entry:
    """One file of a backup, relative to the storage root."""

    path: str
    size: int
    sha256: str
    kind: str  # "database" (SQLite snapshot) | "pg_dump" (PostgreSQL state) | "file"


@dataclass
class Manifest:
    created_at: str
    source: str
    entries: list[Entry] = field(default_factory=list)
    version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def dump(self, path: Path) -> None:
        _write_durably(path, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != FORMAT_VERSION:
                msg = f"{path}: manifest version {doc.get('version')!r}, expected {FORMAT_VERSION}"
                raise BackupError(msg)
            entries = [Entry(**e) for e in doc["entries"]]
            return cls(created_at=doc["created_at"], source=doc["source"], entries=entries)
        except (OSError, ValueError, KeyError, TypeError) as err:
            msg = f"{path}: not a readable backup manifest ({err})"
            raise BackupError(msg) from err


# --- file helpers ------------------------------------------------------------------------------
def _fresh_staging(target: Path, suffix: str) -> Path:
    """An empty directory beside ``target`` to build it in; what an interrupted run left there is discarded."""
    staging = target.with_name(target.name + suffix)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, target: Path) -> None:
    """Make everything in ``staging`` durable, then make it ``target`` (missing or empty) in one rename."""
    for directory in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(directory)
    if target.exists():
        target.rmdir()
    staging.rename(target)
    fsync_dir(target.parent)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the file's data regions; holes (never-written chunk ranges) are skipped."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` keeping holes, fsync it, and return the sha256 of the logical content."""
    digest = hashlib.sha256()
    zeros = bytes(BLOCK)
    size = src.stat().st_size
    with src.open("rb") as fin, dst.open("wb") as fout:
        position = 0
        for start, end in _data_extents(fin.fileno(), size):
            _hash_zeros(digest, start - position, zeros)
            fin.seek(start)
            fout.seek(start)
            remaining = end - start
            while remaining:
                block = fin.read(min(BLOCK, remaining))
                if not block:
                    msg = f"{src} shrank while it was copied"
                    raise BackupError(msg)
                digest.update(block)
                fout.write(block)
                remaining -= len(block)
            position = end
        _hash_zeros(digest, size - position, zeros)
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _hash_zeros(digest: Any, count: int, zeros: bytes) -> None:
    while count > 0:
        n = min(count, len(zeros))
        digest.update(zeros[:n])
        count -= n


def _snapshot_database(src: Path, dst: Path) -> str:
    """SQLite online backup: a consistent copy while other processes keep writing."""
    source = sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
        # The copy stands alone: no WAL beside it, so a restore needs only this one file.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        source.close()
    with dst.open("rb+") as f:
        os.fsync(f.fileno())
    return _sha256(dst)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- what to back up ---------------------------------------------------------------------------
def _databases(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.endswith(SQLITE_SIDECARS) and _is_sqlite(p))


def _plain_files(root: Path, databases: list[Path]) -> Iterator[Path]:
    skip = set(databases) | {Path(f"{db}{suffix}") for db in databases for suffix in SQLITE_SIDECARS}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in TRANSIENT_DIRS]
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if path not in skip and path.is_file() and not path.is_symlink():
                yield path


# --- create ------------------------------------------------------------------------------------
def _libpq_url(state_store_uri: str) -> str:
    """The URL as pg_dump and pg_restore spell it (no SQLAlchemy driver suffix)."""
    return "postgresql://" + state_store_uri.split("://", 1)[1]


def _run_pg(argv: list[str], what: str) -> None:
    try:
        # The operator's own STATE_STORE_URI and paths, as an argument list: no shell involved.
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=24 * 3600)  # noqa: S603
    except FileNotFoundError as err:
        msg = f"{argv[0]} is not installed (Debian: apt-get install postgresql-client)"
        raise BackupError(msg) from err
    except subprocess.CalledProcessError as err:
        msg = f"{what} failed: {err.stderr.strip()}"
        raise BackupError(msg) from err


def _dump_postgres(state_store_uri: str, target: Path) -> str:
    """``pg_dump`` in its custom format: one consistent snapshot however busy the servers are."""
    _run_pg(["pg_dump", "--format=custom", "--no-owner", f"--file={target}", _libpq_url(state_store_uri)], "pg_dump")
    with target.open("rb+") as f:
        os.fsync(f.fileno())
    return _sha256(target)


def _require_empty_database(state_store_uri: str) -> None:
    """Restore only into a database without uploads, keys or robots: never over live state."""
    with psycopg.connect(_libpq_url(state_store_uri)) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        for table in sorted(tables & {"uploads", "api_keys", "robots"}):
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone() != (False,):  # noqa: S608
                msg = f"restore target database has rows in {table}; restore only into an empty database"
                raise BackupError(msg)


def is_postgres(state_store_uri: str) -> bool:
    return state_store_uri.startswith(("postgresql://", "postgresql+psycopg://"))


def _remote(blobs: BlobStore | None) -> BlobStore | None:
    """The blob store when its stored files are not under UPLOAD_DIR (S3); None for the local store."""
    return None if blobs is None or isinstance(blobs, LocalBlobStore) else blobs


def _copy_remote_blobs(
    blobs: BlobStore, partial: Path, manifest: Manifest, old: dict[str, Entry], previous: Path | None
) -> int:
    """Every stored object of the bucket into ``partial/store/``; unchanged ones hard-linked. Returns links made."""
    linked = 0
    for obj in blobs.list_stored():
        relative = f"{IMMUTABLE_DIR}/{obj.name}"
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        before = old.get(relative)
        if before is not None and previous is not None and before.size == obj.size:
            try:
                os.link(previous / relative, target)
            except OSError:
                pass
            else:
                manifest.entries.append(before)
                linked += 1
                continue
        digest = hashlib.sha256()
        with blobs.read_stored(obj.name) as source, target.open("wb") as out:
            while block := source.read(BLOCK):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        manifest.entries.append(Entry(relative, target.stat().st_size, digest.hexdigest(), "file"))
    return linked


def create_backup(
    upload_dir: Path,
    dest: Path,
    *,
    previous: Path | None = None,
    state_store_uri: str = "",
    blobs: BlobStore | None = None,
) -> Manifest:
    """Snapshot ``upload_dir`` (a PostgreSQL state database, the bucket of an S3 blob store) into ``dest``.

    See the module docstring for the guarantees.
    """
    root = upload_dir.resolve()
    if not root.is_dir():
        msg = f"UPLOAD_DIR {root} does not exist"
        raise BackupError(msg)
    if dest.exists() and any(dest.iterdir()):
        msg = f"backup destination {dest} exists and is not empty"
        raise BackupError(msg)
    partial = _fresh_staging(dest, ".partial")
    old = _previous_entries(previous)
    manifest = Manifest(created_at=datetime.now(timezone.utc).isoformat(), source=str(root))
    started, linked = time.monotonic(), 0
    if is_postgres(state_store_uri):
        sha = _dump_postgres(state_store_uri, partial / PG_DUMP)
        manifest.entries.append(Entry(PG_DUMP, (partial / PG_DUMP).stat().st_size, sha, PG_DUMP_KIND))
    databases = _databases(root)
    for db in databases:
        target = partial / db.name
        sha = _snapshot_database(db, target)
        manifest.entries.append(Entry(db.name, target.stat().st_size, sha, "database"))
    for path in _plain_files(root, databases):
        relative = path.relative_to(root).as_posix()
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = _link_unchanged(path, relative, target, old, previous)
        if entry is None:
            entry = Entry(relative, path.stat().st_size, _copy_hashing(path, target), "file")
        else:
            linked += 1
        manifest.entries.append(entry)
    remote = _remote(blobs)
    if remote is not None:
        linked += _copy_remote_blobs(remote, partial, manifest, old, previous)
    manifest.dump(partial / MANIFEST)
    _publish(partial, dest)
    log.info(
        "Backup created: %s (%d databases, %d files, %d bytes, %d hard-linked from %s) in %.1fs",
        dest,
        len(databases),
        len(manifest.entries) - len(databases),
        manifest.total_bytes,
        linked,
        previous.name if previous else "-",
        time.monotonic() - started,
    )
    return manifest


def _previous_entries(previous: Path | None) -> dict[str, Entry]:
    if previous is None:
        return {}
    return {e.path: e for e in Manifest.load(previous / MANIFEST).entries if e.path.startswith(IMMUTABLE_DIR + "/")}


def _link_unchanged(
    path: Path, relative: str, target: Path, old: dict[str, Entry], previous: Path | None
) -> Entry | None:
    """Hard-link a stored file from the previous snapshot when it is the same immutable file."""
    before = old.get(relative)
    if before is None or previous is None or before.size != path.stat().st_size:
        return None
    try:
        os.link(previous / relative, target)
    except OSError:  # another filesystem, or the old copy is gone: copy instead
        return None
    return before


def snapshot_path(parent: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return parent / f"ros2-upload-{stamp}"


def timestamped(parent: Path) -> Path:
    """The next snapshot folder in ``parent``, named by the current UTC time."""
    return snapshot_path(parent, time.time())


def snapshots(parent: Path) -> list[Path]:
    """Complete timestamped snapshots in ``parent``, oldest first."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if SNAPSHOT_NAME.match(p.name) and (p / MANIFEST).is_file())


def prune(parent: Path, keep: int) -> list[Path]:
    removed = snapshots(parent)[:-keep] if keep > 0 else []
    for old in removed:
        shutil.rmtree(old)
        log.info("Backup pruned: %s", old)
    return removed


# --- restore -----------------------------------------------------------------------------------
def verify_backup(src: Path) -> Manifest:
    """Check every file of a backup against its manifest without restoring it."""
    manifest = Manifest.load(src / MANIFEST)
    for entry in manifest.entries:
        _check_entry(entry, src / entry.path, _sha256(src / entry.path) if (src / entry.path).is_file() else None)
    return manifest


def _check_entry(entry: Entry, path: Path, sha: str | None) -> None:
    if sha is None:
        msg = f"backup is missing {entry.path}"
        raise BackupError(msg)
    if sha != entry.sha256:
        msg = f"{entry.path}: sha256 {sha} does not match the manifest ({entry.sha256}); backup corrupt"
        raise BackupError(msg)


def restore_backup(
    src: Path, upload_dir: Path, *, state_store_uri: str = "", blobs: BlobStore | None = None
) -> Manifest:
    """Fill an empty (or missing) ``upload_dir`` from ``src``; every file is checked against the manifest.

    A backup of a PostgreSQL state database is loaded into the empty database ``state_store_uri``.
    With an S3 blob store, stored files go back into the bucket, each checked before it is written.
    """
    manifest = Manifest.load(src / MANIFEST)
    if upload_dir.exists() and any(upload_dir.iterdir()):
        msg = f"restore target {upload_dir} is not empty; restore only into an empty UPLOAD_DIR (server stopped)"
        raise BackupError(msg)
    dump = next((e for e in manifest.entries if e.kind == PG_DUMP_KIND), None)
    if dump is not None and not is_postgres(state_store_uri):
        msg = f"{src} holds a PostgreSQL state dump: set STATE_STORE_URI to the (empty) database to restore it into"
        raise BackupError(msg)
    staging = _fresh_staging(upload_dir, ".restoring")
    started = time.monotonic()
    remote = _remote(blobs)
    for entry in manifest.entries:
        if entry.kind == PG_DUMP_KIND:
            continue  # restored into the database above, not a file of UPLOAD_DIR
        source = src / entry.path
        if not source.is_file():
            _check_entry(entry, source, None)
        if remote is not None and entry.path.startswith(IMMUTABLE_DIR + "/"):
            _check_entry(entry, source, _sha256(source))
            with source.open("rb") as fh:
                remote.write_stored(entry.path.removeprefix(IMMUTABLE_DIR + "/"), fh)
            continue
        target = staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_entry(entry, source, _copy_hashing(source, target))
        if entry.kind == "database":
            _check_database(target)
    if dump is not None:  # last: every file has been verified by now
        _check_entry(dump, src / dump.path, _sha256(src / dump.path) if (src / dump.path).is_file() else None)
        _require_empty_database(state_store_uri)
        # --clean: a server (or `flask` itself) may have created the empty schema already; its rows are checked above.
        restore = ["pg_restore", "--no-owner", "--exit-on-error", "--clean", "--if-exists"]
        restore.append(f"--dbname={_libpq_url(state_store_uri)}")
        _run_pg([*restore, str(src / dump.path)], "pg_restore")
    _publish(staging, upload_dir)
    log.info(
        "Backup restored: %s -> %s (%d files, %d bytes, all sha256 verified) in %.1fs",
        src,
        upload_dir,
        len(manifest.entries),
        manifest.total_bytes,
        time.monotonic() - started,
    )
    return manifest


def _check_database(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        (result,) = db.execute("PRAGMA integrity_check").fetchone()
    finally:
        db.close()
    if result != "ok":
        msg = f"{path.name}: SQLite integrity check failed: {result}"
        raise BackupError(msg)


# --- command line ------------------------------------------------------------------------------
def _blob_store(config: ServerConfig) -> BlobStore | None:
    return open_blob_store(config.blob_store_uri, config.upload_dir) if config.blob_store_uri else None


def backup_cli(config: ServerConfig) -> AppGroup:
    group = AppGroup("backup", help="Back up and restore the storage root (state databases + stored files).")

    @group.command("create")
    @click.argument("dest", type=click.Path(path_type=Path))
    @click.option(
        "--timestamped", "in_parent", is_flag=True, help="DEST is a folder; create ros2-upload-<UTC time> inside it."
    )
    @click.option("--keep", type=int, default=0, help="With --timestamped: keep only the newest N snapshots.")
    def create(dest: Path, in_parent: bool, keep: int) -> None:
        previous = None
        if in_parent:
            existing = snapshots(dest)
            previous = existing[-1] if existing else None
            dest = timestamped(dest)
        blobs = _blob_store(config)
        manifest = _run(
            lambda: create_backup(
                config.upload_dir, dest, previous=previous, state_store_uri=config.state_store_uri, blobs=blobs
            )
        )
        if in_parent and keep:
            prune(dest.parent, keep)
        click.echo(f"backup {dest}: {len(manifest.entries)} files, {manifest.total_bytes} bytes")
        click.echo(str(dest))

    @group.command("restore")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
    @click.option("--upload-dir", type=click.Path(path_type=Path), default=None, help="Default: UPLOAD_DIR.")
    def restore(src: Path, upload_dir: Path | None) -> None:
        target = upload_dir or config.upload_dir
        blobs = _blob_store(config)
        manifest = _run(lambda: restore_backup(src, target, state_store_uri=config.state_store_uri, blobs=blobs))
        click.echo(f"restored {len(manifest.entries)} files ({manifest.total_bytes} bytes) into {target}; all verified")

    @group.command("verify")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
    def verify(src: Path) -> None:
        manifest = _run(lambda: verify_backup(src))
        click.echo(f"{src}: {len(manifest.entries)} files verified")

    return group


def _run(action: Any) -> Manifest:
    try:
        result: Manifest = action()
    except BackupError as err:
        raise click.ClickException(str(err)) from err
    return result


def init_app(app: Flask, config: ServerConfig) -> None:
    """Add ``flask --app upload_server backup create|restore|verify``."""
    app.cli.add_command(backup_cli(config))
