"""Retry decisions of the client against canned HTTP replies (``responses``): what is repeated, and when."""

from __future__ import annotations

import pytest
import requests
import responses

from core.client.errors import PermanentUploadError, TransientUploadError, UploadExpiredError
from core.client.retry import RetryPolicy, parse_retry_after
from core.client.transfer import ServerClient
from core.protocol import HEADER_RETRY_AFTER, BlockedReason, ErrorCode, init_url, upload_status_url

URL = "http://robot-test.invalid:8080/upload"
INIT = init_url(URL)
OK = {"success": True, "upload_id": "u1", "chunk_size": 1024, "chunks": 1, "received": [], "state": "uploading"}


def error(code: ErrorCode, message: str = "nope") -> dict[str, object]:
    return {"success": False, "error": {"code": code.value, "message": message}}


def init_with(policy: RetryPolicy) -> dict[str, object]:
    client = ServerClient(URL)
    return policy.call(lambda: client.init({"filename": "a.mcap", "filesize": 1, "chunks": 1}, 1.0))


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def policy(sleeps: list[float]) -> RetryPolicy:
    return RetryPolicy(max_retries=3, initial=1.0, maximum=60.0, sleep=sleeps.append)


@responses.activate
@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 408])
def test_server_errors_are_retried_until_the_request_succeeds(policy: RetryPolicy, sleeps: list[float], status: int):
    responses.post(INIT, status=status, json=error(ErrorCode.SERVICE_UNAVAILABLE))
    responses.post(INIT, status=status, json=error(ErrorCode.SERVICE_UNAVAILABLE))
    responses.post(INIT, status=201, json=OK)

    assert init_with(policy)["upload_id"] == "u1"
    assert len(responses.calls) == 3
    assert len(sleeps) == 2


@responses.activate
def test_connection_errors_are_retried(policy: RetryPolicy, sleeps: list[float]):
    responses.post(INIT, body=requests.ConnectionError("connection refused"))
    responses.post(INIT, body=requests.ReadTimeout("read timed out"))
    responses.post(INIT, status=201, json=OK)

    assert init_with(policy)["upload_id"] == "u1"
    assert len(sleeps) == 2


@responses.activate
@pytest.mark.parametrize("retry_after", ["7", "120"])
def test_429_waits_exactly_retry_after(policy: RetryPolicy, sleeps: list[float], retry_after: str):
    responses.post(INIT, status=429, json=error(ErrorCode.RATE_LIMITED), headers={HEADER_RETRY_AFTER: retry_after})
    responses.post(INIT, status=201, json=OK)

    init_with(policy)

    assert sleeps == [float(retry_after)]


@responses.activate
def test_503_with_retry_after_waits_that_long(policy: RetryPolicy, sleeps: list[float]):
    responses.post(INIT, status=503, json=error(ErrorCode.SERVICE_UNAVAILABLE), headers={HEADER_RETRY_AFTER: "42"})
    responses.post(INIT, status=201, json=OK)

    init_with(policy)

    assert sleeps == [42.0]


@responses.activate
def test_retry_after_is_capped(sleeps: list[float]):
    capped = RetryPolicy(max_retries=1, max_retry_after=30.0, sleep=sleeps.append)
    responses.post(INIT, status=429, json=error(ErrorCode.RATE_LIMITED), headers={HEADER_RETRY_AFTER: "86400"})
    responses.post(INIT, status=201, json=OK)

    init_with(capped)

    assert sleeps == [30.0]


def test_retry_after_accepts_an_http_date():
    from datetime import datetime, timezone

    now = datetime(2025, 10, 31, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Fri, 31 Oct 2025 12:00:30 GMT", now=lambda: now) == 30.0
    assert parse_retry_after("not a date") is None
    assert parse_retry_after(None) is None


def error_with(code: ErrorCode, message: str = "the reason", **details: object) -> dict[str, object]:
    return {"success": False, "error": {"code": code.value, "message": message, **details}}


@responses.activate
@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(413, error_with(ErrorCode.FILE_TOO_LARGE), id="file-too-large"),
        pytest.param(400, error_with(ErrorCode.INVALID_FIELD, field="filename"), id="filename-refused"),
    ],
)
def test_only_what_can_never_succeed_for_these_bytes_is_permanent(
    policy: RetryPolicy, sleeps: list[float], status: int, body: dict[str, object]
):
    responses.post(INIT, status=status, json=body)

    with pytest.raises(PermanentUploadError) as excinfo:
        init_with(policy)

    assert len(responses.calls) == 1
    assert sleeps == []
    assert excinfo.value.status == status
    assert "the reason" in str(excinfo.value)


@responses.activate
@pytest.mark.parametrize(
    ("status", "code", "blocked"),
    [
        pytest.param(401, ErrorCode.UNAUTHORIZED, BlockedReason.AUTH, id="401-revoked-key"),
        pytest.param(403, ErrorCode.FORBIDDEN, BlockedReason.AUTH, id="403-not-allowed"),
        pytest.param(429, ErrorCode.RATE_LIMITED, BlockedReason.RATE_LIMITED, id="429"),
        pytest.param(507, ErrorCode.INSUFFICIENT_STORAGE, BlockedReason.SERVER_ERROR, id="507-disk-full"),
        pytest.param(400, ErrorCode.INVALID_FIELD, BlockedReason.REJECTED, id="400-other-field"),
        pytest.param(413, ErrorCode.PAYLOAD_TOO_LARGE, BlockedReason.REJECTED, id="413-chunk-body"),
        pytest.param(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, BlockedReason.REJECTED, id="415"),
        pytest.param(422, ErrorCode.CHECKSUM_MISMATCH, BlockedReason.REJECTED, id="422-checksum"),
    ],
)
def test_every_other_refusal_is_retried_with_its_blocked_reason(
    policy: RetryPolicy, sleeps: list[float], status: int, code: ErrorCode, blocked: BlockedReason
):
    responses.post(INIT, status=status, json=error_with(code, field="chunk_size"))
    responses.post(INIT, status=201, json=OK)
    seen: list[str | None] = []
    policy.on_retry = lambda err, _attempt, _delay: seen.append(getattr(err, "blocked", None))

    assert init_with(policy)["upload_id"] == "u1"

    assert len(sleeps) == 1
    assert seen == [blocked.value]


@responses.activate
def test_retries_are_capped_and_then_surface_the_blocked_reason(sleeps: list[float]):
    responses.post(INIT, status=401, json=error_with(ErrorCode.UNAUTHORIZED))
    capped = RetryPolicy(max_retries=6, initial=1.0, maximum=4.0, sleep=sleeps.append)

    with pytest.raises(TransientUploadError) as excinfo:
        init_with(capped)

    assert excinfo.value.blocked == BlockedReason.AUTH.value
    assert len(sleeps) == 6
    assert max(sleeps) <= 4.0


@responses.activate
@pytest.mark.parametrize("status", [404, 410])
def test_a_forgotten_upload_asks_for_a_new_init_instead_of_retrying(
    policy: RetryPolicy, sleeps: list[float], status: int
):
    responses.get(upload_status_url(URL, "u1"), status=status, json=error(ErrorCode.UPLOAD_EXPIRED))
    client = ServerClient(URL)

    with pytest.raises(UploadExpiredError):
        policy.call(lambda: client.status("u1", 1.0))

    assert sleeps == []


@responses.activate
def test_retries_stop_after_max_retries_with_the_last_transient_error(policy: RetryPolicy, sleeps: list[float]):
    responses.post(INIT, status=503, json=error(ErrorCode.SERVICE_UNAVAILABLE))

    with pytest.raises(TransientUploadError) as excinfo:
        init_with(policy)

    assert len(responses.calls) == policy.max_retries + 1
    assert len(sleeps) == policy.max_retries
    assert excinfo.value.status == 503


@responses.activate
def test_backoff_grows_exponentially_with_jitter_up_to_the_maximum(sleeps: list[float]):
    policy = RetryPolicy(max_retries=7, initial=1.0, maximum=20.0, sleep=sleeps.append)
    responses.post(INIT, status=502)

    with pytest.raises(TransientUploadError):
        init_with(policy)

    for attempt, slept in enumerate(sleeps):
        base = min(20.0, 2.0**attempt)
        assert base <= slept <= min(20.0, base + 1.0)
    assert sleeps[-1] == 20.0


@responses.activate
def test_every_retry_is_reported_with_its_attempt_and_delay(sleeps: list[float]):
    seen: list[tuple[int, float, int | None]] = []
    policy = RetryPolicy(
        max_retries=2, sleep=sleeps.append, on_retry=lambda err, n, delay: seen.append((n, delay, err.status))
    )
    responses.post(INIT, status=429, headers={HEADER_RETRY_AFTER: "3"})
    responses.post(INIT, status=500)
    responses.post(INIT, status=201, json=OK)

    init_with(policy)

    assert [(n, status) for n, _delay, status in seen] == [(1, 429), (2, 500)]
    assert seen[0][1] == 3.0
    assert [delay for _n, delay, _s in seen] == sleeps


@responses.activate
def test_a_non_json_success_body_is_treated_as_transient(policy: RetryPolicy, sleeps: list[float]):
    responses.post(INIT, status=200, body="<html>proxy page</html>")
    responses.post(INIT, status=201, json=OK)

    assert init_with(policy)["upload_id"] == "u1"
    assert len(sleeps) == 1
