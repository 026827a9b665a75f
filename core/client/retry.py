"""Retry policy: which failures to repeat, and how long to wait between attempts.

Existing resumable-upload clients retry with a fixed delay or not at all and
ignore ``Retry-After``. Here a failure is first classified into an exception
class (``classify_response``), and tenacity retries only ``TransientUploadError``
with exponential backoff plus jitter, or exactly the server's ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import requests
import tenacity

from core.client.errors import (
    PermanentUploadError,
    TransientUploadError,
    UploadError,
    UploadExpiredError,
)
from core.protocol import ERROR_FIELD, FILENAME_FIELD, HEADER_RETRY_AFTER, BlockedReason, ErrorCode

T = TypeVar("T")

AUTH_STATUSES = frozenset({401, 403})


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or invalid."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def error_details(response: requests.Response) -> tuple[str | None, str, dict[str, Any]]:
    """``(code, message, error object)`` from the server's JSON error body, or the start of whatever it sent."""
    try:
        body = response.json()
    except ValueError:
        return None, (response.text or response.reason or "")[:200], {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error.get("code"), str(error.get("message", "")), error
    return None, str(body)[:200], {}


def is_permanent(code: str | None, error: dict[str, Any]) -> bool:
    """Only what can never succeed for these bytes: the file is too large, or the server refuses its name.

    Everything else (a revoked key, a rate limit, a server that failed an upload
    after a short disk-full) may pass later, so it is retried with capped backoff.
    """
    if code == ErrorCode.FILE_TOO_LARGE.value:
        return True
    return code == ErrorCode.INVALID_FIELD.value and error.get(ERROR_FIELD) == FILENAME_FIELD


def blocked_reason(status: int) -> BlockedReason:
    """The named reason a failed request leaves the upload blocked with."""
    if status in AUTH_STATUSES:
        return BlockedReason.AUTH
    if status == 429:
        return BlockedReason.RATE_LIMITED
    if status >= 500:
        return BlockedReason.SERVER_ERROR
    if status == 408:
        return BlockedReason.UNREACHABLE
    return BlockedReason.REJECTED


def classify_response(
    response: requests.Response, what: str, *, gone_statuses: Collection[int] = (410,)
) -> requests.Response:
    """Return a successful response, or raise the exception class that says what to do next."""
    status = response.status_code
    if status < 400:
        return response
    code, message, error = error_details(response)
    text = f"{what}: HTTP {status} {code or ''} {message}".strip()
    if status in gone_statuses or code == ErrorCode.UPLOAD_EXPIRED.value:
        raise UploadExpiredError(text, status=status, code=code)
    if is_permanent(code, error):
        raise PermanentUploadError(text, status=status, code=code)
    retry_after = parse_retry_after(response.headers.get(HEADER_RETRY_AFTER))
    reason = blocked_reason(status)
    raise TransientUploadError(text, status=status, code=code, retry_after=retry_after, blocked=reason.value)


def transient_from_exception(err: requests.RequestException, what: str) -> TransientUploadError:
    """Connection errors and timeouts are always worth another attempt."""
    return TransientUploadError(f"{what}: {type(err).__name__}: {err}", blocked=BlockedReason.UNREACHABLE.value)


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter for transient failures; ``sleep`` is injectable for tests.

    ``max_retries`` is the number of *re*-tries: a request is tried at most
    ``max_retries + 1`` times before the last TransientUploadError propagates
    (and the caller parks the upload).
    """

    max_retries: int = 5
    initial: float = 1.0
    maximum: float = 60.0
    max_retry_after: float = 600.0
    sleep: Callable[[float], None] = time.sleep
    on_retry: Callable[[UploadError, int, float], None] | None = None
    _backoff: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Composed rather than wait_exponential_jitter, whose arguments changed between tenacity 8 and 9.
        self._backoff = tenacity.wait_exponential(multiplier=self.initial, max=self.maximum) + tenacity.wait_random(
            0, self.initial
        )

    def wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        """Honour the server's ``Retry-After`` exactly; otherwise back off exponentially with jitter."""
        outcome = retry_state.outcome
        err = outcome.exception() if outcome is not None else None
        if isinstance(err, TransientUploadError) and err.retry_after is not None:
            return min(err.retry_after, self.max_retry_after)
        return min(self.maximum, float(self._backoff(retry_state)))

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        if self.on_retry is None or retry_state.outcome is None:
            return
        err = retry_state.outcome.exception()
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if isinstance(err, UploadError):
            self.on_retry(err, retry_state.attempt_number, delay)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` until it succeeds, raises a non-transient error, or the retries are spent."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(0, self.max_retries) + 1),
            wait=self.wait_seconds,
            retry=tenacity.retry_if_exception_type(TransientUploadError),
            sleep=self.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(fn)
