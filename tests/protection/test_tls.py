"""HTTPS as the seed promises: `SSL_CERT=… SSL_KEY=… python3 upload_server.py` and gunicorn --certfile/--keyfile."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.processes import PYTHON, ManagedProcess, free_port, port_open, wait_until
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import TLSFiles, make_tls_files

pytestmark = pytest.mark.gunicorn


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[int]:
    """`python3 upload_server.py` with the seed's variables; yields its port."""
    root = tmp_path_factory.mktemp("dev")
    port = free_port()
    env = {
        "SSL_CERT": str(tls.cert),
        "SSL_KEY": str(tls.key),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "UPLOAD_DIR": str(root / "uploads"),
        "BACKGROUND_JOBS": "0",
    }
    with ManagedProcess([PYTHON, "upload_server.py"], log_path=root / "dev.log", env=env) as process:
        wait_until(lambda: port_open(port) or not process.alive(), 30, 0.1, "python3 upload_server.py")
        assert process.alive(), process.log()
        yield port


@pytest.fixture(scope="module")
def gunicorn_tls(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[int]:
    root = tmp_path_factory.mktemp("gunicorn-tls")
    server = GunicornServer(
        root / "uploads", workers=1, scheme="https", extra_args=["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))  # the helper's health probe verifies with it
        with server:
            yield server.port


@pytest.fixture(params=["dev_server", "gunicorn_tls"])
def https_port(request: pytest.FixtureRequest) -> int:
    port: int = request.getfixturevalue(request.param)
    return port


def test_curl_with_the_ca_gets_health(https_port: int, tls: TLSFiles) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(tls.ca), f"https://localhost:{https_port}/health"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"


def test_hsts_is_sent_over_https(https_port: int, tls: TLSFiles) -> None:
    reply = requests.get(f"https://localhost:{https_port}/health", verify=str(tls.ca), timeout=10)

    assert reply.headers["Strict-Transport-Security"].startswith("max-age=")


def test_unknown_certificate_is_refused_by_clients(https_port: int) -> None:
    done = subprocess.run(
        ["curl", "-sS", f"https://localhost:{https_port}/health"], capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 60  # curl: peer certificate cannot be authenticated


def _plain_http(port: int) -> str:
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
    except requests.ConnectionError:
        return "connection closed"
    return f"HTTP {reply.status_code}"


def test_plain_http_to_the_tls_port_fails_cleanly(https_port: int, tls: TLSFiles) -> None:
    # Closing the connection or a bare 400 are both clean; serving the API unencrypted is not.
    assert _plain_http(https_port) in {"connection closed", "HTTP 400"}

    after = requests.get(f"https://localhost:{https_port}/health", verify=str(tls.ca), timeout=10)
    assert after.status_code == 200  # the server shrugged it off


def _handshake(port: int, ca: Path, version: ssl.TLSVersion) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    # Let the client offer old protocols so that any refusal comes from the server.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        context.minimum_version = version
        context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls_sock,
    ):
        return str(tls_sock.version())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_tls_is_accepted(https_port: int, tls: TLSFiles, version: ssl.TLSVersion) -> None:
    assert _handshake(https_port, tls.ca, version) == version.name.replace("_", ".")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_is_refused_by_the_server(https_port: int, tls: TLSFiles, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(https_port, tls.ca, version)

    # The server's alert, not a client that could not even offer the protocol.
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(refused.value)
