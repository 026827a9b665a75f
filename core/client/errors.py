"""Client exception classes: the retry policy decides by class, never by parsing messages."""

from __future__ import annotations


class UploadError(Exception):
    """Any failure of an upload; ``code`` is the server's ``error.code`` when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TransientUploadError(UploadError):
    """Worth retrying: connection errors, timeouts, stalls, 5xx, 429, 401/403 and other 4xx.

    ``blocked`` names why the upload cannot move on its own (a ``BlockedReason``
    value: ``auth``, ``rate_limited`` …) so status, events and heartbeats can say it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        blocked: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after
        self.blocked = blocked


class StalledTransferError(TransientUploadError):
    """The watchdog aborted a transfer that made no byte of progress (or overran its deadline)."""


class PermanentUploadError(UploadError):
    """Can never succeed for these bytes: the file is too large, or the server refuses its name."""


class UploadExpiredError(UploadError):
    """The server forgot the upload (410, or 404 on a known id): start over with a new init."""


class ServerFailedError(UploadExpiredError):
    """The server gave up on this upload (state ``failed``, often transient trouble): re-hash, then a new init."""


class FileChangedError(UploadExpiredError):
    """The bag's size, mtime or inode changed since it was hashed: re-hash and send it again as a new upload."""


class VerificationError(UploadExpiredError):
    """The server's stored copy is not verified or its checksum differs from ours: the bag is kept and re-sent."""


class TransferAbortedError(UploadError):
    """``stop()`` interrupted a transfer; the upload resumes on the next ``start()``."""
