"""The client address for limits and logs: X-Forwarded-For is believed only from configured proxies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask, jsonify, request

from core.config import ConfigError
from core.server import proxies


def address_app(entries: tuple[str, ...]) -> Flask:
    app = Flask("addr")
    app.add_url_rule("/addr", "addr", lambda: jsonify({"addr": request.remote_addr, "scheme": request.scheme}))
    app.wsgi_app = proxies.wrap(app.wsgi_app, entries)  # type: ignore[method-assign]
    return app


def seen(entries: tuple[str, ...], peer: str, forwarded: str | None, proto: str | None = None) -> tuple[str, str]:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    if proto:
        headers["X-Forwarded-Proto"] = proto
    reply = address_app(entries).test_client().get("/addr", headers=headers, environ_base={"REMOTE_ADDR": peer})
    return reply.json["addr"], reply.json["scheme"]


@pytest.mark.parametrize(
    ("entries", "peer", "forwarded", "expected"),
    [
        pytest.param((), "203.0.113.9", "1.2.3.4", "203.0.113.9", id="no-proxy-configured-header-ignored"),
        pytest.param(("127.0.0.1",), "127.0.0.1", "198.51.100.7", "198.51.100.7", id="trusted-proxy"),
        pytest.param(("127.0.0.1",), "203.0.113.9", "1.2.3.4", "203.0.113.9", id="untrusted-peer-header-ignored"),
        pytest.param(
            ("127.0.0.1",), "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7", id="client-spoofed-left-entry"
        ),
        pytest.param(
            ("127.0.0.1", "10.0.0.0/8"), "127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7", id="proxy-chain"
        ),
        pytest.param(("127.0.0.1",), "127.0.0.1", "not-an-ip", "127.0.0.1", id="garbage-header"),
        pytest.param(("127.0.0.1",), "127.0.0.1", None, "127.0.0.1", id="no-header"),
        pytest.param(("1",), "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7", id="hop-count"),
        pytest.param(("0",), "127.0.0.1", "198.51.100.7", "127.0.0.1", id="hop-count-zero"),
    ],
)
def test_client_address(entries: tuple[str, ...], peer: str, forwarded: str | None, expected: str) -> None:
    assert seen(entries, peer, forwarded)[0] == expected


@pytest.mark.parametrize(
    ("entries", "peer", "scheme"), [(("127.0.0.1",), "127.0.0.1", "https"), ((), "127.0.0.1", "http")]
)
def test_forwarded_proto_only_from_a_trusted_proxy(entries: tuple[str, ...], peer: str, scheme: str) -> None:
    assert seen(entries, peer, "198.51.100.7", proto="https")[1] == scheme


def test_bad_entry_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        proxies.parse_trusted_proxies(("nginx.local",))


def test_limits_see_the_forwarded_address(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False, ratelimit_init="1 per hour", trusted_proxies=("127.0.0.1",)).test_client()

    def init(client_addr: str) -> int:
        return client.post(
            "/upload/init", json={}, headers={"X-Forwarded-For": client_addr}, environ_base={"REMOTE_ADDR": "127.0.0.1"}
        ).status_code

    assert [init("198.51.100.1"), init("198.51.100.1"), init("198.51.100.2")] == [201, 429, 201]
