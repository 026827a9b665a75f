"""The shipped nginx site (``nginx/``) is valid for Debian's nginx and matches the server's limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config import ServerConfig, parse_size
from tests.helpers.nginx import SITE_FILE, SNIPPETS_DIR, NginxServer
from tests.helpers.tls import make_tls_files

pytestmark = pytest.mark.nginx


def directive(name: str, text: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", text, flags=re.MULTILINE)


def test_shipped_site_passes_nginx_t(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    result = NginxServer(tmp_path / "nginx", upstream_ports=[8080, 8081], cert=tls.cert, key=tls.key).check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_body_limits_equal_the_servers_largest_chunk_and_for_tus_its_largest_file() -> None:
    """The server-wide limit is one chunk; /files/ (a tus PATCH may be the whole file) takes a whole file."""
    server, tus = directive("client_max_body_size", SITE_FILE.read_text())
    assert parse_size("client_max_body_size", server + "iB") == ServerConfig().max_chunk_size
    assert parse_size("client_max_body_size", tus + "iB") == ServerConfig().max_file_size


def test_upstream_speaks_http_1_1_with_connection_cleared() -> None:
    proxy = (SNIPPETS_DIR / "ros2-upload-proxy.conf").read_text()
    assert directive("proxy_http_version", proxy) == ["1.1"]
    assert 'Connection ""' in directive("proxy_set_header", proxy)


def test_tls_profile_is_modern_and_loads_on_openssl_3_0() -> None:
    tls = (SNIPPETS_DIR / "ros2-upload-tls.conf").read_text()
    assert directive("ssl_protocols", tls) == ["TLSv1.2 TLSv1.3"]
    assert "X25519MLKEM768" not in directive("ssl_ecdh_curve", tls)[0]


def test_every_location_with_its_own_add_header_repeats_the_security_headers() -> None:
    """nginx drops inherited add_header lines in such a location; the include restores them."""
    site = SITE_FILE.read_text()
    for block in re.findall(r"location [^{]+\{[^}]*\}", site):
        if "add_header" in block:
            assert "ros2-upload-headers.conf" in block, block
