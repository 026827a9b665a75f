"""Upload lifecycle signals (blinker): metrics, the dashboard and logs subscribe without the service knowing them.

The sender is the component that saw the event (the ``UploadService``, or the finalize job for
``upload_completed``/``upload_failed``); receivers should rely on the keyword arguments only:

- ``upload_initialized``: ``upload_id, owner, filename, filesize, chunks, resumed, deduplicated``
- ``chunk_stored``: ``upload_id, owner, index, bytes, seconds``
- ``upload_completed``: ``upload_id, owner, filesize, stored_size, codec, ratio, verified, seconds``
- ``upload_failed``: ``upload_id, owner, code, message``
- ``upload_aborted``: ``upload_id, owner``
- ``upload_expired``: ``upload_id, owner, bytes_received``
- ``finalize_retried``: ``upload_id, attempt, reason`` (``disk_full``, ``store_unavailable``: not counted
  against JOB_MAX_ATTEMPTS; ``error``: counted)
- ``upload_deleted``: ``upload_id, owner, by, bytes_freed`` (a stored upload deleted by an admin or retention)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blinker import Namespace

from core.protocol import Codec

if TYPE_CHECKING:
    from core.server.state_store import UploadRecord

_signals = Namespace()

upload_initialized = _signals.signal("upload-initialized")
chunk_stored = _signals.signal("chunk-stored")
upload_completed = _signals.signal("upload-completed")
upload_failed = _signals.signal("upload-failed")
upload_aborted = _signals.signal("upload-aborted")
upload_expired = _signals.signal("upload-expired")
finalize_retried = _signals.signal("finalize-retried")
upload_deleted = _signals.signal("upload-deleted")


def send_upload_completed(sender: object, record: UploadRecord, seconds: float) -> None:
    """``upload_completed`` for a stored record (finalized, or completed as a copy of another upload)."""
    stored = record.stored_size or 0
    upload_completed.send(
        sender,
        upload_id=record.upload_id,
        owner=record.owner,
        filesize=record.filesize,
        stored_size=stored,
        codec=(record.codec or Codec.NONE).value,
        ratio=record.filesize / stored if stored else 1.0,
        verified=record.verified,
        seconds=seconds,
    )
