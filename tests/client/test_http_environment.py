"""What the robot's HTTP sessions (uploads, heartbeats) take from the environment: proxies and CA bundle once, no netrc.

requests consults the environment on every request of a session that trusts it: every proxy
variable (and ``NO_PROXY``) is re-read and re-parsed, and ``~/.netrc`` is searched for the host.
The client reads the environment once per session instead (a chunk PUT is one of ~128 requests
per GiB), and its API key is what authenticates it, whatever a netrc file says.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.client.transfer import ServerClient
from core.heartbeat import HeartbeatReporter
from core.protocol import HEADER_AUTHORIZATION

STATUS = {"success": True, "upload_id": "u1", "state": "uploading", "received": []}


class Recorder(ThreadingHTTPServer):
    """A 127.0.0.1 HTTP server that answers a status GET or a heartbeat POST and keeps each request line and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self._answer(STATUS)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer({"success": True, "commands": []})

    def _answer(self, reply: dict[str, object]) -> None:
        self.server.seen.append((self.requestline, dict(self.headers)))
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        """Quiet: the test reads ``seen``."""


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_an_http_proxy_from_the_environment_carries_the_requests(clean_environment, recorder: Recorder) -> None:
    clean_environment.setenv("HTTP_PROXY", recorder.url)
    client = ServerClient("http://robots.example.invalid:8080/upload", api_key="k")

    assert client.status("u1", 5.0)["state"] == "uploading"
    assert client.status("u1", 5.0)["state"] == "uploading"

    lines = [line for line, _ in recorder.seen]
    assert lines == ["GET http://robots.example.invalid:8080/upload/u1 HTTP/1.1"] * 2


def test_no_proxy_sends_the_server_direct(clean_environment, recorder: Recorder) -> None:
    clean_environment.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: used, it would fail
    clean_environment.setenv("NO_PROXY", "127.0.0.1")
    client = ServerClient(recorder.url + "/upload")

    assert client.status("u1", 5.0)["state"] == "uploading"
    assert [line for line, _ in recorder.seen] == ["GET /upload/u1 HTTP/1.1"]


def test_a_netrc_login_for_the_server_never_replaces_the_api_key(
    clean_environment, recorder: Recorder, tmp_path: Path
) -> None:
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    ServerClient(recorder.url + "/upload", api_key="robot-key").status("u1", 5.0)
    HeartbeatReporter(recorder.url + "/upload", "robot-1", sources={}, api_key="robot-key").beat()

    assert [headers[HEADER_AUTHORIZATION] for _, headers in recorder.seen] == ["Bearer robot-key"] * 2


def test_requests_read_the_proxy_environment_once_per_session(
    clean_environment, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    environment = urllib.request.getproxies_environment

    def counted() -> dict[str, str]:
        reads.append(1)
        return environment()

    monkeypatch.setattr(urllib.request, "getproxies_environment", counted)
    client = ServerClient(recorder.url + "/upload")
    client.status("u1", 5.0)
    after_first = len(reads)

    for _ in range(20):
        client.status("u1", 5.0)

    assert len(recorder.seen) == 21
    assert len(reads) == after_first
