"""Client exception classes: the retry policy decides by class, never by parsing messages."""

from __future__ import annotations


class UploadError(Exception):
    """Any failure of an upload; ``code`` is the server's ``error.code`` when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TransientUploadError(UploadError):
    """Worth retrying: connection errors, timeouts, stalls, 5xx and 429."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class StalledTransferError(TransientUploadError):
    """The watchdog aborted a transfer that made no byte of progress (or overran its deadline)."""


class PermanentUploadError(UploadError):
    """A request that cannot succeed by repeating it (4xx other than 408/410/429): the upload fails."""


class UploadExpiredError(UploadError):
    """The server forgot the upload (410, or 404 on a known id): start over with a new init."""


class VerificationError(PermanentUploadError):
    """The server's stored copy is not verified or its checksum differs from ours: the bag is kept."""


class TransferAbortedError(UploadError):
    """``stop()`` interrupted a transfer; the upload resumes on the next ``start()``."""
