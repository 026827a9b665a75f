"""End to end through the shipped nginx site (TLS, limits, JSON errors, SSE) to a real gunicorn."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from core.config import ServerConfig
from core.protocol import CHUNK_PATH, HEALTH_PATH, INIT_PATH, ErrorCode, MiB
from core.server.health import DETAILED_HEALTH_PATH
from core.server.metrics import METRICS_PATH
from tests.deploy.client import UploadClient, scrape, write_source
from tests.deploy.conftest import Stack, start_stack, stop_stack

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn]

SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=False)


def assert_json_error(reply: requests.Response, status: int, code: ErrorCode) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert body["success"] is False
    assert body["error"]["code"] == code.value


def assert_security_headers_once(headers: requests.structures.CaseInsensitiveDict[str]) -> None:
    for name in SECURITY_HEADERS:
        assert name in headers, name
        assert "," not in headers[name], f"{name} sent twice: {headers[name]}"


def test_seed_curl_health_check_over_https(stack: Stack) -> None:
    """The seed's `curl -k https://localhost…/health`, and the same with the certificate verified."""
    for tls_option in (["-k"], ["--cacert", stack.verify]):
        result = curl(*tls_option, f"{stack.url}{HEALTH_PATH}")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "ok"


def test_plain_http_is_redirected_to_https(stack: Stack) -> None:
    reply = requests.get(f"http://127.0.0.1:{stack.nginx.http_port}/uploads", allow_redirects=False, timeout=5)
    assert reply.status_code == 301
    assert reply.headers["Location"].startswith("https://")


def s_client(stack: Stack, *options: str) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{stack.nginx.https_port}", "-servername", "localhost"]
    return subprocess.run(
        [*argv, "-CAfile", stack.verify, *options], input="", capture_output=True, text=True, timeout=15, check=False
    )


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_1_2_and_1_3_handshakes_verify(stack: Stack, version: str) -> None:
    result = s_client(stack, version)
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_is_refused_by_the_server(stack: Stack, version: str) -> None:
    # SECLEVEL=0 lets this client offer the old protocol: the refusal must come from nginx.
    result = s_client(stack, version, "-cipher", "DEFAULT@SECLEVEL=0")
    assert result.returncode != 0
    assert "no protocols available" not in result.stderr, "the client refused, not the server"
    assert "alert protocol version" in result.stderr, result.stderr


def test_security_headers_appear_once_on_app_replies(stack: Stack) -> None:
    for path in (HEALTH_PATH, "/uploads", "/no-such-route"):
        assert_security_headers_once(requests.get(stack.url + path, verify=stack.verify, timeout=5).headers)


def test_metrics_are_not_reachable_through_nginx(stack: Stack) -> None:
    assert requests.get(stack.url + METRICS_PATH, verify=stack.verify, timeout=5).status_code == 404
    assert requests.get(stack.apps[0].url + METRICS_PATH, timeout=5).status_code == 200


def test_nginx_limit_req_answers_429_in_json_with_headers(stack: Stack) -> None:
    """A burst beyond `burst=40` from one address is cut by nginx itself, before gunicorn."""
    session = requests.Session()

    def get(_: int) -> requests.Response:
        return session.get(stack.url + "/upload/0123456789abcdef0123456789abcdef", verify=stack.verify, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(get, range(120)))
    limited = [r for r in replies if r.status_code == 429]
    assert limited, sorted({r.status_code for r in replies})
    assert all(r.status_code in (404, 429) for r in replies)
    assert_json_error(limited[0], 429, ErrorCode.RATE_LIMITED)
    assert "this address" in limited[0].json()["error"]["message"]  # nginx's page, not the app's
    assert limited[0].headers["Retry-After"] == "1"
    assert_security_headers_once(limited[0].headers)


def test_oversized_chunk_is_refused_by_nginx_in_json_before_upload(stack: Stack) -> None:
    """Only the headers are sent: nginx answers 413 from Content-Length alone."""
    too_big = ServerConfig().max_chunk_size + 1
    context = ssl.create_default_context(cafile=stack.verify)
    with (
        socket.create_connection(("127.0.0.1", stack.nginx.https_port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            f"PUT /upload/0123456789abcdef0123456789abcdef/chunk/0 HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {too_big}\r\n\r\n".encode()
        )
        head, _, body = tls.recv(65536).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"Content-Type: application/json" in head
    assert b"Strict-Transport-Security" in head
    assert json.loads(body)["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE.value


def test_upstream_down_is_a_json_503(tmp_path: Path) -> None:
    running = start_stack(tmp_path, {"RATELIMIT_ENABLED": "0"}, workers=1)
    try:
        running.apps[0].stop()
        reply = requests.get(running.url + "/uploads", verify=running.verify, timeout=10)
    finally:
        stop_stack(running)
    assert_json_error(reply, 503, ErrorCode.SERVICE_UNAVAILABLE)
    assert reply.headers["Retry-After"] == "5"


def test_detailed_health_through_nginx_reports_every_dependency(stack: Stack) -> None:
    reply = requests.get(stack.url + DETAILED_HEALTH_PATH, verify=stack.verify, timeout=10)
    assert reply.status_code == 200, reply.text
    checks = reply.json()["checks"]
    assert {"database", "storage", "rate_limiter", "jobs"} <= set(checks)
    assert all(check["ok"] for check in checks.values())


def test_access_log_records_request_and_upstream_time(stack: Stack) -> None:
    requests.get(stack.url + "/health?access-log-probe", verify=stack.verify, timeout=5)
    line = next(line for line in stack.nginx.access_log.read_text().splitlines() if "access-log-probe" in line)
    assert " rt=" in line
    assert " urt=" in line
    assert f"upstream=127.0.0.1:{stack.apps[0].port}" in line


def sse_events(reply: requests.Response) -> Iterator[str]:
    for line in reply.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            yield line.removeprefix("event: ")


def test_dashboard_events_stream_through_nginx_unbuffered(stack: Stack) -> None:
    url = stack.url + "/dashboard/events"
    with requests.get(url, verify=stack.verify, stream=True, timeout=(5, 10)) as reply:
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        assert next(sse_events(reply)) == "state"


def test_metrics_move_during_an_upload_through_nginx(stack: Stack, tmp_path: Path) -> None:
    """Scraped from gunicorn (two workers) before, during and after an upload sent through nginx."""
    metrics_url = stack.apps[0].url + METRICS_PATH
    source = write_source(tmp_path / "metrics.mcap", 20 * MiB + 12345, compressible=True)
    client = UploadClient(stack.url, verify=stack.verify)
    before = scrape(metrics_url)
    during: list[dict[str, float]] = []
    upload_id = client.upload(
        source, 4 * MiB, compression=True, after_chunk=lambda i: during.append(scrape(metrics_url)) if i == 2 else None
    )
    client.finalize(upload_id)
    after = scrape(metrics_url)

    def moved(samples: dict[str, float], name: str) -> float:
        return samples.get(name, 0.0) - before.get(name, 0.0)

    (mid,) = during
    assert moved(mid, "ros2_upload_bytes_received_total") == 3 * 4 * MiB
    assert mid["ros2_upload_active_uploads"] >= 1
    assert moved(after, "ros2_upload_bytes_received_total") == source.size
    assert moved(after, "ros2_upload_chunk_seconds_count") == 6
    assert moved(after, "ros2_upload_uploads_started_total{kind=new}") == 1
    assert moved(after, "ros2_upload_uploads_completed_total{codec=zstd}") == 1
    assert moved(after, "ros2_upload_compression_ratio_count") == 1
    assert moved(after, "ros2_upload_compression_ratio_bucket{le=0.2}") == 1  # highly repetitive data
    chunk_route = f"method=PUT,route={CHUNK_PATH},status=201"
    assert moved(after, f"ros2_upload_http_requests_total{{{chunk_route}}}") == 6
    assert after["ros2_upload_disk_free_bytes"] > 0
    assert client.downloaded_sha256(upload_id) == source.sha256


def test_seed_init_loop_ends_in_json_429(tmp_path: Path) -> None:
    """The seed's loop of 100 `curl -X POST …/upload/init`, through nginx, with the app's default limits on."""
    running = start_stack(tmp_path, {"RATELIMIT_ENABLED": "1"})
    try:
        codes, last = [], None
        for _ in range(100):
            result = curl(
                "-k", "-X", "POST", f"{running.url}{INIT_PATH}", "-H", "Content-Type: application/json",
                "-d", '{"filename":"test.bag","filesize":1000,"chunks":1}',
                "-o", "/dev/stdout", "-w", "\n%{http_code}",
            )  # fmt: skip
            body, _, code = result.stdout.rpartition("\n")
            codes.append(int(code))
            last = body
    finally:
        stop_stack(running)
    assert codes[0] in (200, 201)
    assert codes[-1] == 429
    assert set(codes) <= {200, 201, 429}
    assert last is not None
    document = json.loads(last)
    assert document["success"] is False
    assert document["error"]["code"] == ErrorCode.RATE_LIMITED.value
