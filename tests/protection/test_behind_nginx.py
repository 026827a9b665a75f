"""Protection through the shipped nginx site: per-address limits see the real client, headers appear once.

Every 127.0.0.0/8 address is loopback on Linux, so a client that binds its
socket to 127.0.0.2 or 127.0.0.3 is a distinct "remote address" to nginx,
which forwards it in ``X-Forwarded-For``; gunicorn trusts that header only
from nginx (``TRUSTED_PROXIES=127.0.0.1``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from core.protocol import HEADER_RETRY_AFTER, UPLOADS_PATH
from core.server.openapi import OPENAPI_PATH
from core.server.security import SECURITY_HEADERS
from tests.helpers.nginx import NginxServer
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import TLSFiles, make_tls_files

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn]

PUBLIC_LIMIT = 3
REMAINING = "X-RateLimit-Remaining"
ONCE = (*SECURITY_HEADERS, "Content-Security-Policy", "Strict-Transport-Security")


class SourceAddressAdapter(HTTPAdapter):
    """Connections from a chosen loopback address, so one test process can be several clients."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(source: str, verify: Path | bool = True) -> requests.Session:
    session = requests.Session()
    adapter = SourceAddressAdapter(source)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = str(verify) if isinstance(verify, Path) else verify
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override ``verify``
    return session


@dataclass
class Deployment:
    nginx: NginxServer
    app: GunicornServer
    tls: TLSFiles

    def through_nginx(self, source: str) -> requests.Session:
        return client_at(source, self.tls.ca)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """nginx → gunicorn (one worker: memory:// counters are per worker) with small app limits, auth on."""
    base = tmp_path_factory.mktemp("behind-nginx")
    env = {
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATELIMIT_ENABLED": "1",
        "RATELIMIT_DEFAULT": f"{PUBLIC_LIMIT} per hour",
        "RATELIMIT_STATUS": f"{PUBLIC_LIMIT} per hour",
        "RATELIMIT_KEY_STATUS": f"{PUBLIC_LIMIT} per hour",
    }
    tls = make_tls_files(base / "tls")
    with GunicornServer(base / "uploads", workers=1, auth=True, env=env) as app:
        nginx = NginxServer(base / "nginx", upstream_ports=[app.port], cert=tls.cert, key=tls.key)
        with nginx:
            yield Deployment(nginx, app, tls)


def remaining(replies: list[requests.Response]) -> list[str | int]:
    """The app's count of what is left in each reply's bucket; the status where the app refused."""
    return [r.status_code if r.status_code == 429 else r.headers[REMAINING] for r in replies]


def test_anonymous_clients_behind_nginx_are_limited_by_their_own_address(deployment: Deployment) -> None:
    url = deployment.nginx.url + OPENAPI_PATH
    first, second = deployment.through_nginx("127.0.0.2"), deployment.through_nginx("127.0.0.3")

    first_replies = [first.get(url, timeout=10) for _ in range(PUBLIC_LIMIT + 1)]
    # nginx overwrites a client's own X-Forwarded-For: claiming the first client's address changes nothing.
    second_replies = [second.get(url, headers={"X-Forwarded-For": "127.0.0.2"}, timeout=10) for _ in range(2)]

    assert remaining(first_replies) == ["2", "1", "0", 429]
    assert first_replies[-1].json()["error"]["code"] == "rate_limited"
    assert int(first_replies[-1].headers[HEADER_RETRY_AFTER]) > 0
    assert remaining(second_replies) == ["2", "1"]


def test_forwarded_for_sent_straight_to_gunicorn_is_ignored(deployment: Deployment) -> None:
    """Only nginx's address is trusted: a client reaching gunicorn directly cannot pick its bucket."""
    url = deployment.app.url + OPENAPI_PATH
    direct = client_at("127.0.0.4")

    replies = [
        direct.get(url, headers={"X-Forwarded-For": f"198.51.100.{n}"}, timeout=10) for n in range(PUBLIC_LIMIT + 1)
    ]

    assert remaining(replies) == ["2", "1", "0", 429]


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [
        pytest.param(OPENAPI_PATH, None, 200, id="public-200"),
        pytest.param(UPLOADS_PATH, None, 401, id="no-key-401"),
        pytest.param("/upload/0123456789abcdef0123456789abcdef", "robot", 404, id="unknown-upload-404"),
    ],
)
def test_security_headers_appear_exactly_once_through_nginx(
    deployment: Deployment, path: str, key: str | None, status: int
) -> None:
    headers = deployment.app.headers() if key else {}
    reply = deployment.through_nginx("127.0.0.5").get(deployment.nginx.url + path, headers=headers, timeout=10)

    assert reply.status_code == status
    assert {name: len(reply.raw.headers.getlist(name)) for name in ONCE} == dict.fromkeys(ONCE, 1)


def test_security_headers_appear_exactly_once_on_the_apps_429_through_nginx(deployment: Deployment) -> None:
    session = deployment.through_nginx("127.0.0.6")
    url = deployment.nginx.url + "/upload/0123456789abcdef0123456789abcdef"
    headers = deployment.app.headers(deployment.app.admin_key)

    replies = [session.get(url, headers=headers, timeout=10) for _ in range(PUBLIC_LIMIT + 1)]

    assert [r.status_code for r in replies] == [404] * PUBLIC_LIMIT + [429]
    assert replies[-1].json()["error"]["code"] == "rate_limited"  # the app's 429, not nginx's
    assert {name: len(replies[-1].raw.headers.getlist(name)) for name in ONCE} == dict.fromkeys(ONCE, 1)
