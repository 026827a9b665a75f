"""Test TLS material: a throw-away CA and a server certificate for localhost, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one test CA and the server certificate it signed."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, *identities: str) -> TLSFiles:
    """A CA plus a leaf for ``localhost``/``127.0.0.1`` (or ``identities``), as files nginx or gunicorn can load."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*(identities or ("localhost", "127.0.0.1")))
    files = TLSFiles(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    # Chain first leaf then intermediates, as Let's Encrypt's fullchain.pem is laid out.
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key.chmod(0o600)
    return files
