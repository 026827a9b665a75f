"""Upload state behind a small interface, on SQL: SQLite (embedded default) or PostgreSQL (several hosts).

The interface speaks only in ``UploadRecord``s, chunk indices and job/lease
names. Every state change is a compare-and-set (``transition``): two workers
can never both finalize, abort or expire the same upload. Finalize jobs are
fenced: a claim returns an attempt number, and every change that attempt makes
names it, so an attempt whose lease ran out (a stalled worker, a paused VM)
changes nothing once another attempt has claimed the job. Upload times are
epoch seconds passed in by the caller, which owns the clock; lease times come
from the database's clock, the one clock every host shares.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, select, true, update

from core.protocol import Codec, UploadState
from core.server import db
from core.server.bag_store import SQLBagCatalog
from core.server.catalog import BagCatalog
from core.server.db import CONCAT_JOINED, chunks, jobs, leases, tus_uploads, uploads, upsert

# ``chunks`` of an upload whose size is not known yet (a real upload, even an empty one, has at least one chunk).
SIZE_UNKNOWN = 0


@dataclass(frozen=True)
class UploadRecord:
    """One upload session, as stored."""

    upload_id: str
    owner: str
    filename: str
    filesize: int
    chunk_size: int
    chunks: int
    created_at: float
    updated_at: float
    md5: str | None = None
    sha256: str | None = None
    compression: Codec = Codec.NONE  # what the client asked for
    state: UploadState = UploadState.UPLOADING
    blob_id: str | None = None  # the stored file (shared by deduplicated uploads)
    codec: Codec | None = None  # how the stored file is encoded
    stored_size: int | None = None
    verified: bool = False
    deduplicated: bool = False
    error_code: str | None = None
    error_message: str | None = None
    progress: int = 0  # bytes processed by the finalize job
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # size + head + tail (core.protocol.FINGERPRINT_EDGE), declared at init

    @property
    def size_known(self) -> bool:
        """False for a tus upload created with Upload-Defer-Length: ``filesize`` is then MAX_FILE_SIZE, a bound.

        Such a record has ``chunks == SIZE_UNKNOWN`` until the tus front sets the real size and
        chunk count in one transaction (``TusStore.declare_length``); it cannot finalize before.
        """
        return self.chunks != SIZE_UNKNOWN


MUTABLE_FIELDS = frozenset(
    {"state", "blob_id", "codec", "stored_size", "verified", "md5", "sha256"}
    | {"error_code", "error_message", "progress", "deduplicated"}
)


def check_mutable(changes: Collection[str]) -> None:
    """Refuse a ``transition`` that would rewrite an upload's identity (owner, file, size, ...)."""
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        msg = f"not updatable: {sorted(unknown)}"
        raise ValueError(msg)


@dataclass(frozen=True)
class UploadQuery:
    """A page of the upload listing, newest first."""

    owner: str | None = None
    state: UploadState | None = None
    limit: int = 50
    offset: int = 0


class StateStore(BagCatalog):
    """Where upload sessions, received chunks, finalize jobs, leases and the bag catalogue live.

    Implementations must be safe to use from several threads, processes and hosts at once.
    """

    @abc.abstractmethod
    def create_upload(self, record: UploadRecord) -> None:
        """Insert a new upload. Like every write, raises ``OSError(ENOSPC)`` when the store is full."""

    @abc.abstractmethod
    def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    @abc.abstractmethod
    def get_upload_with_receipts(self, upload_id: str) -> tuple[UploadRecord | None, dict[int, str]]:
        """``get_upload``, then (unless complete) ``received_chunks``: what a status poll reads."""

    @abc.abstractmethod
    def find_resumable(
        self,
        *,
        owner: str,
        filename: str,
        filesize: int,
        chunk_size: int,
        md5: str | None,
        sha256: str | None,
        fingerprint: str | None = None,
    ) -> UploadRecord | None:
        """The newest uploading/finalizing upload of the same file by the same owner.

        The same file: the same checksums declared at init, or none and the same ``fingerprint``.
        """

    @abc.abstractmethod
    def find_duplicates(
        self,
        *,
        filesize: int,
        md5: str | None,
        sha256: str | None,
        owner: str | None,
        limit: int = 5,
        fingerprint: str | None = None,
    ) -> list[UploadRecord]:
        """Complete, verified uploads with this sha256 (or md5 and size, or else fingerprint and size), oldest first.

        ``owner=None``: all owners. Several, so that the caller can skip a copy whose stored file
        turns out to be missing. A fingerprint match is only a candidate: its whole-file sha256 is not checked.
        """

    @abc.abstractmethod
    def list_uploads(self, query: UploadQuery) -> tuple[list[UploadRecord], int]:
        """One page of uploads, newest first, and the total matching the filters."""

    @abc.abstractmethod
    def transition(
        self,
        upload_id: str,
        from_states: Collection[UploadState],
        now: float,
        *,
        fence: int | None = None,
        idle_before: float | None = None,
        **changes: Any,
    ) -> UploadRecord | None:
        """Apply ``changes`` only if the upload is in one of ``from_states``; the new record, or None if not.

        ``fence``: only if the upload's finalize job is still at that attempt. ``idle_before``: only
        if its last activity is older (the sweep; checked in the same statement as the change).
        """

    @abc.abstractmethod
    def record_chunk(self, upload_id: str, index: int, receipt: str, now: float) -> int | None:
        """Mark a chunk received (and the upload active) if it is still uploading.

        ``receipt``: the chunk's checksum as ``<algorithm>:<hex>`` (core.checksums.ChunkChecksum).

        Returns the number of chunks received so far, or None if the upload is no longer uploading.
        """

    @abc.abstractmethod
    def chunk_receipt(self, upload_id: str, index: int) -> str | None:
        """The receipt of an acknowledged chunk, None if it has not been received."""

    @abc.abstractmethod
    def received_chunks(self, upload_id: str) -> dict[int, str]:
        """Chunk index → receipt of every acknowledged chunk."""

    @abc.abstractmethod
    def stale_uploads(self, idle_before: float, limit: int = 100) -> list[UploadRecord]:
        """Uploads still ``uploading`` whose last activity is older than ``idle_before``."""

    @abc.abstractmethod
    def states_of(self, upload_ids: Collection[str]) -> dict[str, UploadState]:
        """The state of each known upload among ``upload_ids`` (unknown ids are left out)."""

    @abc.abstractmethod
    def prune_chunk_receipts(self) -> int:
        """Forget the chunk receipts of complete and aborted uploads (never read again); how many rows went."""

    @abc.abstractmethod
    def start_finalize(self, upload_id: str, now: float, *, sha256: str | None = None) -> UploadRecord | None:
        """Atomically move an upload from uploading to finalizing and queue its finalize job.

        ``sha256``, if given, becomes the upload's whole-file digest in the same transaction.
        """

    @abc.abstractmethod
    def claim_job(self, holder: str, lease: float) -> tuple[str, int] | None:
        """Claim one due finalize job for ``lease`` seconds of database time: (upload_id, attempt), or None.

        The attempt number is the fencing token of this claim.
        """

    @abc.abstractmethod
    def renew_job(self, upload_id: str, attempt: int, lease: float) -> bool:
        """Extend the lease of ``attempt`` by ``lease`` seconds; False if another attempt has claimed the job."""

    @abc.abstractmethod
    def release_job(self, upload_id: str, attempt: int, retry_in: float, *, failed: bool = True) -> int | None:
        """Give the job back after an attempt; due again in ``retry_in`` seconds.

        ``failed`` counts the attempt against the failure budget (a full disk does not). Returns the
        job's failure count, or None if the attempt is stale (nothing changed).
        """

    @abc.abstractmethod
    def job_counts(self) -> dict[str, int]:
        """Queued finalize jobs: ``running`` (held), ``retrying`` (released after an attempt), ``waiting``."""

    @abc.abstractmethod
    def finish_job(self, upload_id: str, attempt: int) -> bool:
        """Delete the job if ``attempt`` still holds it; False (nothing deleted) if another claimed it."""

    @abc.abstractmethod
    def finish_attempt(
        self, upload_id: str, attempt: int, now: float, from_states: Collection[UploadState], **changes: Any
    ) -> UploadRecord | None:
        """``transition`` and ``finish_job`` in one transaction, both fenced by ``attempt``; None changes nothing."""

    @abc.abstractmethod
    def job_attempt(self, upload_id: str) -> int | None:
        """The attempt that currently holds (or last held) the upload's job; None when there is no job."""

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, duration: float) -> bool:
        """Hold the named lease for ``duration`` seconds of database time if it is free, expired or ours."""

    def close(self) -> None:
        """Release connections."""


_COLUMNS = tuple(f.name for f in fields(UploadRecord))
_ACTIVE = (UploadState.UPLOADING.value, UploadState.FINALIZING.value)


def _to_row(record: UploadRecord) -> dict[str, Any]:
    return {name: _to_column(name, getattr(record, name)) for name in _COLUMNS}


def _to_column(name: str, value: Any) -> Any:
    if name == "metadata":
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return value
    return getattr(value, "value", value)


# Built once: a status poll runs both, and building a statement costs more than running it.
_UPLOAD_BY_ID = db.DirectRead(select(uploads).where(uploads.c.upload_id == bindparam("upload_id")))
_RECEIVED = db.DirectRead(select(chunks.c.idx, chunks.c.receipt).where(chunks.c.upload_id == bindparam("upload_id")))


def _from_row(row: Mapping[str, Any]) -> UploadRecord:
    values = {name: row[name] for name in _COLUMNS}
    values["metadata"] = json.loads(values["metadata"])
    values["compression"] = Codec(values["compression"])
    values["codec"] = Codec(values["codec"]) if values["codec"] else None
    values["state"] = UploadState(values["state"])
    values["verified"] = bool(values["verified"])
    values["deduplicated"] = bool(values["deduplicated"])
    return UploadRecord(**values)


def _receipts(rows: list[tuple[Any, ...]]) -> dict[int, str]:
    return {int(idx): str(digest) for idx, digest in rows}


class SQLStateStore(SQLBagCatalog, StateStore):
    """Every upload, chunk receipt, job and lease in the state database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _one(self, query: Any) -> UploadRecord | None:
        with db.read(self.engine) as conn:
            row = conn.execute(query).mappings().first()
        return _from_row(row) if row else None

    def create_upload(self, record: UploadRecord) -> None:
        with db.write(self.engine) as conn:
            conn.execute(insert(uploads).values(_to_row(record)))

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = _UPLOAD_BY_ID.first(self.engine, upload_id=upload_id)
        return _from_row(row) if row else None

    def get_upload_with_receipts(self, upload_id: str) -> tuple[UploadRecord | None, dict[int, str]]:
        # The receipts are read after the record: a chunk acknowledged in between shows, none can vanish
        # (receipts are pruned only once an upload is complete or aborted, and complete needs none).
        with db.direct_connection(self.engine) as raw:  # one pool checkout for both reads
            row = _UPLOAD_BY_ID.first(self.engine, raw=raw, upload_id=upload_id)
            record = _from_row(row) if row else None
            if record is None or record.state is UploadState.COMPLETE:
                return record, {}
            _, rows = _RECEIVED.rows(self.engine, raw=raw, upload_id=upload_id)
        return record, _receipts(rows)

    def find_resumable(
        self,
        *,
        owner: str,
        filename: str,
        filesize: int,
        chunk_size: int,
        md5: str | None,
        sha256: str | None,
        fingerprint: str | None = None,
    ) -> UploadRecord | None:
        c = uploads.c
        return self._one(
            select(uploads)
            .where(c.owner == owner, c.filename == filename, c.filesize == filesize, c.chunk_size == chunk_size)
            .where(c.md5.is_(None) if md5 is None else c.md5 == md5)
            .where(c.sha256.is_(None) if sha256 is None else c.sha256 == sha256)
            .where(true() if md5 or sha256 else c.fingerprint == fingerprint)
            .where(c.state.in_(_ACTIVE))
            .order_by(c.created_at.desc())
            .limit(1)
        )

    def find_duplicates(
        self,
        *,
        filesize: int,
        md5: str | None,
        sha256: str | None,
        owner: str | None,
        limit: int = 5,
        fingerprint: str | None = None,
    ) -> list[UploadRecord]:
        c = uploads.c
        if sha256:
            query = select(uploads).where(c.sha256 == sha256)
        elif md5:
            query = select(uploads).where(c.md5 == md5, c.filesize == filesize)
        elif fingerprint:
            query = select(uploads).where(c.fingerprint == fingerprint, c.filesize == filesize)
        else:
            return []
        if owner is not None:
            query = query.where(c.owner == owner)
        query = query.where(c.state == UploadState.COMPLETE.value, c.verified.is_(True))
        with db.read(self.engine) as conn:
            rows = conn.execute(query.order_by(c.created_at).limit(limit)).mappings().all()
        return [_from_row(row) for row in rows]

    def list_uploads(self, query: UploadQuery) -> tuple[list[UploadRecord], int]:
        """A page of uploads; tus partial uploads already joined into a final upload are not listed."""
        c = uploads.c
        joined = select(tus_uploads.c.upload_id).where(tus_uploads.c.concat == CONCAT_JOINED)
        where = [c.upload_id.not_in(joined)]
        if query.owner is not None:
            where.append(c.owner == query.owner)
        if query.state is not None:
            where.append(c.state == query.state.value)
        with db.read(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(uploads).where(*where)).scalar_one()
            rows = (
                conn.execute(
                    select(uploads)
                    .where(*where)
                    .order_by(c.created_at.desc(), c.upload_id)
                    .limit(query.limit)
                    .offset(query.offset)
                )
                .mappings()
                .all()
            )
        return [_from_row(row) for row in rows], int(total)

    def _transition(
        self,
        conn: Connection,
        upload_id: str,
        from_states: Collection[UploadState],
        now: float,
        fence: int | None,
        idle_before: float | None,
        changes: dict[str, Any],
    ) -> UploadRecord | None:
        check_mutable(changes)
        c = uploads.c
        conditions = [c.upload_id == upload_id, c.state.in_([s.value for s in from_states])]
        if fence is not None:
            # Lock the job row first: on PostgreSQL a concurrent claim either committed before (then the
            # fence fails here) or waits for this transaction; a plain EXISTS would read a stale snapshot.
            held = conn.execute(
                select(jobs.c.upload_id)
                .where(jobs.c.upload_id == upload_id, jobs.c.attempts == fence)
                .with_for_update()
            ).first()
            if held is None:
                return None
        if idle_before is not None:
            conditions.append(c.updated_at < idle_before)
        values = {name: _to_column(name, value) for name, value in changes.items()}
        result = conn.execute(update(uploads).where(and_(*conditions)).values(**values, updated_at=now))
        if result.rowcount != 1:
            return None
        row = conn.execute(select(uploads).where(c.upload_id == upload_id)).mappings().one()
        return _from_row(row)

    def transition(
        self,
        upload_id: str,
        from_states: Collection[UploadState],
        now: float,
        *,
        fence: int | None = None,
        idle_before: float | None = None,
        **changes: Any,
    ) -> UploadRecord | None:
        with db.write(self.engine) as conn:
            return self._transition(conn, upload_id, from_states, now, fence, idle_before, changes)

    def record_chunk(self, upload_id: str, index: int, receipt: str, now: float) -> int | None:
        c = uploads.c
        with db.write(self.engine, durable=False) as conn:
            touched = conn.execute(
                update(uploads)
                .where(c.upload_id == upload_id, c.state == UploadState.UPLOADING.value)
                .values(updated_at=now)
            )
            if touched.rowcount != 1:
                return None
            stmt = upsert(conn, chunks).values(upload_id=upload_id, idx=index, receipt=receipt)
            conn.execute(stmt.on_conflict_do_update(index_elements=["upload_id", "idx"], set_={"receipt": receipt}))
            count = conn.execute(
                select(func.count()).select_from(chunks).where(chunks.c.upload_id == upload_id)
            ).scalar_one()
        return int(count)

    def chunk_receipt(self, upload_id: str, index: int) -> str | None:
        with db.read(self.engine) as conn:
            value = conn.execute(
                select(chunks.c.receipt).where(chunks.c.upload_id == upload_id, chunks.c.idx == index)
            ).scalar()
        return None if value is None else str(value)

    def received_chunks(self, upload_id: str) -> dict[int, str]:
        _, rows = _RECEIVED.rows(self.engine, upload_id=upload_id)
        return _receipts(rows)

    def stale_uploads(self, idle_before: float, limit: int = 100) -> list[UploadRecord]:
        c = uploads.c
        with db.read(self.engine) as conn:
            rows = (
                conn.execute(
                    select(uploads)
                    .where(c.state == UploadState.UPLOADING.value, c.updated_at < idle_before)
                    .order_by(c.updated_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [_from_row(row) for row in rows]

    def states_of(self, upload_ids: Collection[str]) -> dict[str, UploadState]:
        if not upload_ids:
            return {}
        with db.read(self.engine) as conn:
            rows = conn.execute(select(uploads.c.upload_id, uploads.c.state).where(uploads.c.upload_id.in_(upload_ids)))
            return {str(uid): UploadState(state) for uid, state in rows}

    def prune_chunk_receipts(self) -> int:
        finished = select(uploads.c.upload_id).where(
            uploads.c.state.in_([UploadState.COMPLETE.value, UploadState.ABORTED.value])
        )
        with db.write(self.engine) as conn:
            return int(conn.execute(delete(chunks).where(chunks.c.upload_id.in_(finished))).rowcount)

    def start_finalize(self, upload_id: str, now: float, *, sha256: str | None = None) -> UploadRecord | None:
        changes: dict[str, Any] = {"state": UploadState.FINALIZING, "progress": 0}
        if sha256 is not None:
            changes["sha256"] = sha256
        with db.write(self.engine) as conn:
            record = self._transition(
                conn,
                upload_id,
                (UploadState.UPLOADING,),
                now,
                None,
                None,
                changes,
            )
            if record is None:
                return None
            stmt = upsert(conn, jobs).values(upload_id=upload_id, holder=None, due_at=db.db_now(conn), attempts=0)
            # A job left by an earlier finalize keeps counting: its attempt numbers must never repeat.
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["upload_id"], set_={"holder": None, "due_at": db.db_now(conn)}
                )
            )
        return record

    def claim_job(self, holder: str, lease: float) -> tuple[str, int] | None:
        with db.write(self.engine) as conn:
            now = db.db_now(conn)
            # SKIP LOCKED: on PostgreSQL concurrent claimers take different jobs instead of queueing;
            # SQLite's BEGIN IMMEDIATE already serialises them.
            due = conn.execute(
                select(jobs.c.upload_id)
                .where(jobs.c.due_at <= now)
                .order_by(jobs.c.due_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar()
            if due is None:
                return None
            attempt = conn.execute(
                update(jobs)
                .where(jobs.c.upload_id == due)
                .values(holder=holder, due_at=now + lease, attempts=jobs.c.attempts + 1)
                .returning(jobs.c.attempts)
            ).scalar_one()
        return str(due), int(attempt)

    def _reschedule(self, upload_id: str, attempt: int, delay: float, **values: Any) -> bool:
        with db.write(self.engine) as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.upload_id == upload_id, jobs.c.attempts == attempt)
                .values(due_at=db.db_now(conn) + delay, **values)
            )
            return result.rowcount == 1

    def renew_job(self, upload_id: str, attempt: int, lease: float) -> bool:
        return self._reschedule(upload_id, attempt, lease)

    def release_job(self, upload_id: str, attempt: int, retry_in: float, *, failed: bool = True) -> int | None:
        with db.write(self.engine) as conn:
            failures = conn.execute(
                update(jobs)
                .where(jobs.c.upload_id == upload_id, jobs.c.attempts == attempt)
                .values(due_at=db.db_now(conn) + retry_in, holder=None, failures=jobs.c.failures + int(failed))
                .returning(jobs.c.failures)
            ).scalar()
        return None if failures is None else int(failures)

    def job_counts(self) -> dict[str, int]:
        c = jobs.c
        with db.read(self.engine) as conn:
            rows = conn.execute(
                select(c.holder.is_not(None), c.attempts > 0, func.count()).group_by(
                    c.holder.is_not(None), c.attempts > 0
                )
            ).all()
        counts = {"running": 0, "retrying": 0, "waiting": 0}
        for held, tried, count in rows:
            counts["running" if held else "retrying" if tried else "waiting"] += int(count)
        return counts

    @staticmethod
    def _delete_job(conn: Connection, upload_id: str, attempt: int) -> bool:
        result = conn.execute(delete(jobs).where(jobs.c.upload_id == upload_id, jobs.c.attempts == attempt))
        return result.rowcount == 1

    def finish_job(self, upload_id: str, attempt: int) -> bool:
        with db.write(self.engine) as conn:
            return self._delete_job(conn, upload_id, attempt)

    def finish_attempt(
        self, upload_id: str, attempt: int, now: float, from_states: Collection[UploadState], **changes: Any
    ) -> UploadRecord | None:
        with db.write(self.engine) as conn:
            record = self._transition(conn, upload_id, from_states, now, attempt, None, changes)
            if record is not None:
                self._delete_job(conn, upload_id, attempt)
            return record

    def job_attempt(self, upload_id: str) -> int | None:
        with db.read(self.engine) as conn:
            value = conn.execute(select(jobs.c.attempts).where(jobs.c.upload_id == upload_id)).scalar()
        return None if value is None else int(value)

    def acquire_lease(self, name: str, holder: str, duration: float) -> bool:
        with db.write(self.engine) as conn:
            now = db.db_now(conn)
            stmt = upsert(conn, leases).values(name=name, holder=holder, until=now + duration)
            result = conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"holder": stmt.excluded.holder, "until": stmt.excluded.until},
                    where=(leases.c.until <= now) | (leases.c.holder == stmt.excluded.holder),
                ).returning(leases.c.name)
            )
            return result.first() is not None

    def close(self) -> None:
        self.engine.dispose()


def open_state_store(engine: Engine) -> StateStore:
    """The state store on the server's engine (see ``core.server.db.open_engine``)."""
    return SQLStateStore(engine)
