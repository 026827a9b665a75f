"""Fixtures that start the deployment as shipped: real nginx (TLS) in front of real gunicorn, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.nginx import NginxServer
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import TLSFiles, make_tls_files

# nginx is the only proxy in front of gunicorn: trust its X-Forwarded-For, as DEPLOYMENT.md says.
BEHIND_NGINX = {"TRUSTED_PROXIES": "127.0.0.1", "GUNICORN_THREADS": "4"}


@dataclass
class Stack:
    """nginx on ``nginx.https_port`` → gunicorn server(s); ``verify`` is the test CA for requests/curl."""

    nginx: NginxServer
    apps: list[GunicornServer]
    tls: TLSFiles

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def verify(self) -> str:
        return str(self.tls.ca)


def start_stack(base: Path, env: Mapping[str, str], *, workers: int = 2) -> Stack:
    tls = make_tls_files(base / "tls")
    app = GunicornServer(base / "uploads", workers=workers, env={**BEHIND_NGINX, **env}).start()
    try:
        nginx = NginxServer(base / "nginx", upstream_ports=[app.port], cert=tls.cert, key=tls.key).start()
    except BaseException:
        app.stop()
        raise
    return Stack(nginx, [app], tls)


def stop_stack(stack: Stack) -> None:
    stack.nginx.stop()
    for app in stack.apps:
        app.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shipped nginx site in front of gunicorn (2 workers), app rate limits off: nginx's are on."""
    running = start_stack(tmp_path_factory.mktemp("stack"), {"RATELIMIT_ENABLED": "0"})
    yield running
    stop_stack(running)
