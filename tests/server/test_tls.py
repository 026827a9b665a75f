"""The dev server's TLS context: the seed's SSL_CERT/SSL_KEY, never below TLS 1.2."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from core.server.tls import server_context


def test_server_context_loads_the_pair_and_refuses_old_tls(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))

    context = server_context(tmp_path / "cert.pem", tmp_path / "key.pem")

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
