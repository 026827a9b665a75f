"""Real deployments for third-party tus clients: gunicorn alone, or nginx (TLS) in front, with fault proxies.

    client ─▶ cut ─▶ gunicorn                       ("gunicorn"; cut and flip are one proxy)
    client ─▶ cut ─▶ nginx (TLS) ─▶ flip ─▶ gunicorn ("nginx")

``cut`` is where the client's connection breaks (``drop_after_bytes``); ``flip`` corrupts a byte
after TLS ended, so the body no longer matches the Upload-Checksum the client computed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from core.protocol import AUTH_SCHEME, HEADER_AUTHORIZATION, upload_status_url
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.nginx import NginxServer
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import make_tls_files

# Small native chunks: a few MiB span many chunk boundaries; the cut lands inside one.
APP_ENV = {"DEFAULT_CHUNK_SIZE": "256KiB"}


@dataclass
class Deployment:
    kind: str
    app: GunicornServer
    cut: FaultProxy
    flip: FaultProxy
    ca: Path | None
    endpoint: str  # the tus creation URL the client is given

    @property
    def auth(self) -> dict[str, str]:
        return {HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {self.app.robot_key}"}

    def cut_after(self, count: int) -> None:
        """Cut the client's connection after ``count`` request bytes; the app still gets those bytes."""
        self.cut.keep_delivered = True
        self.cut.drop_after_bytes = count

    def reset_faults(self) -> None:
        for proxy in (self.cut, self.flip):
            proxy.drop_after_bytes = None
            proxy.flip_after(None)

    def status(self, upload_id: str) -> dict[str, Any]:
        reply = requests.get(upload_status_url(self.app.upload_url, upload_id), headers=self.auth, timeout=10)
        return dict(reply.json())

    def wait_stored(self, upload_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The upload's status once the finalize job the last PATCH queued has finished."""
        wait_until(lambda: self.status(upload_id)["state"] in ("complete", "failed"), timeout, 0.1, "finalize")
        return self.status(upload_id)

    def wait_patch_ended(self, upload_id: str, timeout: float = 30.0) -> None:
        """Wait until the server finished the PATCH whose connection was cut (it logs one line when done).

        Until then it still commits the bytes that were on their way, and a resumed PATCH at the
        offset a HEAD answered meanwhile would meet a 409: a real client retries; a test waits.
        """
        wait_until(lambda: f"ID: {upload_id} - offset 0 -> " in self.app.log(), timeout, 0.05, "the cut PATCH")

    def stored_sha256(self, upload_id: str) -> str:
        url = f"{self.app.url}/uploads/{upload_id}/file"
        reply = requests.get(url, headers=self.auth, timeout=60)
        reply.raise_for_status()
        return hashlib.sha256(reply.content).hexdigest()


@contextlib.contextmanager
def deploy(kind: str, base: Path) -> Iterator[Deployment]:
    with GunicornServer(base / "uploads", workers=2, auth=True, env=APP_ENV, log_dir=base) as app:
        if kind == "gunicorn":
            with FaultProxy(app.port) as proxy:
                yield Deployment(kind, app, proxy, proxy, None, proxy.url + "/files/")
            return
        tls = make_tls_files(base / "tls")
        with (
            FaultProxy(app.port) as flip,
            NginxServer(base / "nginx", upstream_ports=[flip.port], cert=tls.cert, key=tls.key) as nginx,
            FaultProxy(nginx.https_port) as cut,
        ):
            yield Deployment(kind, app, cut, flip, tls.ca, f"https://localhost:{cut.port}/files/")
