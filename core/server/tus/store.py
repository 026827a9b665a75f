"""The tus view of an upload, in the state database beside its ``uploads`` row (table ``tus_uploads``).

One implementation in SQL for SQLite and PostgreSQL. The offset only moves by compare-and-set,
in the same transaction as the chunk receipt and the upload's activity time, so two requests
(or hosts) can never both advance it from the same place, and an acknowledged offset always has
its bytes in the blob store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update

from core.protocol import UploadState
from core.server import db
from core.server.db import CONCAT_JOINED, chunks, tus_uploads, uploads, upsert
from core.server.state_store import SIZE_UNKNOWN
from core.server.tus.protocol import CONCAT_PARTIAL


@dataclass(frozen=True)
class TusRecord:
    upload_id: str
    upload_length: int
    upload_offset: int
    concat: str | None = None
    parts: tuple[str, ...] = ()
    raw_metadata: str = ""
    received_sha256: str | None = None
    hash_state: tuple[str, bytes] | None = None  # (format, state) of the sha256 of bytes [0, upload_offset)


class _Stale(Exception):
    """Roll back an offset advance whose upload stopped uploading meanwhile."""


class TusStore:
    """tus rows on the server's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, record: TusRecord) -> None:
        with db.write(self.engine) as conn:
            conn.execute(
                insert(tus_uploads).values(
                    upload_id=record.upload_id,
                    upload_length=record.upload_length,
                    upload_offset=record.upload_offset,
                    concat=record.concat,
                    parts=json.dumps(list(record.parts)) if record.parts else None,
                    raw_metadata=record.raw_metadata,
                    received_sha256=record.received_sha256,
                )
            )

    def get(self, upload_id: str) -> TusRecord | None:
        with db.read(self.engine) as conn:
            row = conn.execute(select(tus_uploads).where(tus_uploads.c.upload_id == upload_id)).mappings().first()
        if row is None:
            return None
        return TusRecord(
            upload_id=row["upload_id"],
            upload_length=int(row["upload_length"]),
            upload_offset=int(row["upload_offset"]),
            concat=row["concat"],
            parts=tuple(json.loads(row["parts"])) if row["parts"] else (),
            raw_metadata=row["raw_metadata"],
            received_sha256=row["received_sha256"],
            hash_state=None if row["hash_state"] is None else (str(row["hash_format"]), bytes(row["hash_state"])),
        )

    def received_sha256(self, upload_id: str) -> str | None:
        """The in-order sha256 of a completed tus upload, if one process hashed every byte (else None)."""
        with db.read(self.engine) as conn:
            value = conn.execute(
                select(tus_uploads.c.received_sha256).where(tus_uploads.c.upload_id == upload_id)
            ).scalar()
        return None if value is None else str(value)

    def advance(
        self,
        upload_id: str,
        start: int,
        end: int,
        now: float,
        *,
        chunk: tuple[int, str] | None = None,
        received_sha256: str | None = None,
        hash_state: tuple[str, bytes] | None = None,
    ) -> bool:
        """Move the offset from ``start`` to ``end`` (and record ``chunk`` = (index, receipt)); False if it moved.

        The upload must still be uploading: a terminated or expired upload takes no more bytes.
        ``hash_state``: the running sha256 of bytes [0, end), stored with ``end`` or cleared.
        """
        hash_format, state = hash_state if hash_state is not None else (None, None)
        try:
            with db.write(self.engine) as conn:
                moved = conn.execute(
                    update(tus_uploads)
                    .where(
                        tus_uploads.c.upload_id == upload_id,
                        tus_uploads.c.upload_offset == start,
                        tus_uploads.c.upload_length >= end,  # a length declared meanwhile below ``end``
                    )
                    .values(
                        upload_offset=end,
                        received_sha256=received_sha256,
                        hash_format=hash_format,
                        hash_state=state,
                    )
                )
                if moved.rowcount != 1:
                    return False
                touched = conn.execute(
                    update(uploads)
                    .where(uploads.c.upload_id == upload_id, uploads.c.state == UploadState.UPLOADING.value)
                    .values(updated_at=now)
                )
                if touched.rowcount != 1:
                    raise _Stale
                if chunk is not None:
                    index, receipt = chunk
                    stmt = upsert(conn, chunks).values(upload_id=upload_id, idx=index, receipt=receipt)
                    conn.execute(
                        stmt.on_conflict_do_update(index_elements=["upload_id", "idx"], set_={"receipt": receipt})
                    )
        except _Stale:
            return False
        return True

    def declare_length(self, upload_id: str, length: int, chunk_count: int, now: float) -> bool:
        """Set the length of an upload created with Upload-Defer-Length, on both rows at once; False if it moved.

        Fenced: only while the native size is still unknown and the upload uploading, and only
        if the offset has not passed ``length`` meanwhile (a racing PATCH may have advanced it).
        """
        try:
            with db.write(self.engine) as conn:
                moved = conn.execute(
                    update(tus_uploads)
                    .where(tus_uploads.c.upload_id == upload_id, tus_uploads.c.upload_offset <= length)
                    .values(upload_length=length)
                )
                if moved.rowcount != 1:
                    return False
                sized = conn.execute(
                    update(uploads)
                    .where(
                        uploads.c.upload_id == upload_id,
                        uploads.c.state == UploadState.UPLOADING.value,
                        uploads.c.chunks == SIZE_UNKNOWN,
                    )
                    .values(filesize=length, chunks=chunk_count, updated_at=now)
                )
                if sized.rowcount != 1:
                    raise _Stale
        except _Stale:
            return False
        return True

    def mark_joined(self, upload_ids: tuple[str, ...]) -> None:
        """These partial uploads are now in a final upload: listings leave them out from here on."""
        with db.write(self.engine) as conn:
            conn.execute(
                update(tus_uploads)
                .where(tus_uploads.c.upload_id.in_(upload_ids), tus_uploads.c.concat == CONCAT_PARTIAL)
                .values(concat=CONCAT_JOINED)
            )

    def prune_joined(self, older_than: float) -> int:
        """Delete joined partial uploads (their rows; abort removed their bytes) idle since before ``older_than``."""
        with db.write(self.engine) as conn:
            ids = (
                conn.execute(
                    select(uploads.c.upload_id)
                    .join(tus_uploads, tus_uploads.c.upload_id == uploads.c.upload_id)
                    .where(
                        tus_uploads.c.concat == CONCAT_JOINED,
                        uploads.c.state == UploadState.ABORTED.value,
                        uploads.c.updated_at < older_than,
                    )
                )
                .scalars()
                .all()
            )
            if not ids:
                return 0
            for table in (chunks, tus_uploads, uploads):
                conn.execute(delete(table).where(table.c.upload_id.in_(ids)))
        return len(ids)
