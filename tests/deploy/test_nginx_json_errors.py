"""Errors nginx produces itself (before or instead of the app) are the app's JSON error document too."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl

import pytest

from core.protocol import ErrorCode
from tests.deploy.conftest import Stack

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn]

SECURITY_HEADER = b"strict-transport-security:"


def exchange(stack: Stack, request: bytes, *, tls: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to nginx's HTTPS port; the reply's status, headers (lower-case names) and body."""
    with contextlib.ExitStack() as stack_of_sockets:
        conn = stack_of_sockets.enter_context(socket.create_connection(("127.0.0.1", stack.nginx.https_port), 10))
        if tls:
            context = ssl.create_default_context(cafile=stack.verify)
            conn = stack_of_sockets.enter_context(context.wrap_socket(conn, server_hostname="localhost"))
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


CASES = {
    "no Host header": (b"GET /uploads HTTP/1.1\r\nConnection: close\r\n\r\n", True, 400),
    "garbage request line": (b"NOT HTTP AT ALL\r\n\r\n", True, 400),
    "plain HTTP to the HTTPS port": (
        b"GET /uploads HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        False,
        400,
    ),
    "request line over 4 KiB": (
        b"GET /upload/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        True,
        414,
    ),
    "header over 4 KiB": (
        b"GET /uploads HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 5000 + b"\r\nConnection: close\r\n\r\n",
        True,
        431,
    ),
}


@pytest.mark.parametrize(("request_bytes", "tls", "status"), CASES.values(), ids=CASES.keys())
def test_malformed_http_is_refused_by_nginx_in_json(stack: Stack, request_bytes: bytes, tls: bool, status: int) -> None:
    got, headers, body = exchange(stack, request_bytes, tls=tls)

    assert got == status, body[:300]
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert document["success"] is False
    assert document["error"]["code"] == ErrorCode.BAD_REQUEST.value
    assert "strict-transport-security" in headers


def test_a_request_line_gunicorn_alone_would_refuse_in_html_is_refused_by_nginx_in_json(stack: Stack) -> None:
    """Between nginx's 4 KiB and gunicorn's limit_request_line, nginx is the stricter: its JSON answers."""
    line = b"GET /upload/" + b"c" * 4200 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    status, headers, _body = exchange(stack, line)

    assert (status, headers["content-type"]) == (414, "application/json")


def test_every_json_body_nginx_sends_is_an_error_document_with_a_protocol_code() -> None:
    """The literal bodies in the site file carry codes the client knows (core.protocol.ErrorCode)."""
    import re

    from tests.helpers.nginx import SITE_FILE

    bodies = re.findall(r"return (\d{3}) '(\{.*\})\\n';", SITE_FILE.read_text())
    codes = {status: json.loads(body)["error"]["code"] for status, body in bodies}

    assert set(codes) == {"400", "404", "413", "414", "429", "431", "503"}
    assert set(codes.values()) <= {code.value for code in ErrorCode}


@pytest.mark.parametrize("path", ["/metrics", "/_nginx_errors/bad_request"])
def test_paths_nginx_keeps_to_itself_are_a_json_404(stack: Stack, path: str) -> None:
    status, headers, body = exchange(
        stack, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )

    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body)["error"]["code"] == ErrorCode.NOT_FOUND.value


def test_an_app_error_passes_through_unchanged(stack: Stack) -> None:
    """The app's own JSON 404 (with its message) is not replaced by nginx's."""
    request = b"GET /upload/0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    status, _headers, body = exchange(stack, request)

    assert status == 404
    assert "0123456789abcdef0123456789abcdef" in json.loads(body)["error"]["message"]
