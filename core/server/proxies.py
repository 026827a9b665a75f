"""The real client address behind nginx: believe ``X-Forwarded-*`` only from configured proxies.

Rate limits and logs key on ``REMOTE_ADDR``. Behind a proxy that is the
proxy's address, and a header set by anyone else is a lie: a client could
pick its own rate-limit bucket. ``TRUSTED_PROXIES`` is either a hop count
(werkzeug's ``ProxyFix``: the server is reachable only through that many
proxies) or a list of proxy addresses/CIDRs, whose forwarded headers are
believed and walked from the right like nginx's ``real_ip_recursive``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from core.config import ConfigError, ServerConfig

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("upload_server.proxies")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    """WSGI middleware rewriting ``REMOTE_ADDR`` and the scheme when the peer is a trusted proxy."""

    def __init__(self, app: WSGIApplication, networks: Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def trusted(self, text: str | None) -> bool:
        address = _address(text or "")
        return address is not None and any(address in network for network in self.networks)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR")
        if self.trusted(peer):
            hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
            client = peer
            # The rightmost address not added by one of our proxies is the client's.
            while hops:
                client = hops.pop()
                if not self.trusted(client):
                    break
            if client and _address(client) is not None:
                environ["werkzeug.proxy_fix.orig_remote_addr"] = peer
                environ["REMOTE_ADDR"] = client
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in {"http", "https"}:
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)


def parse_trusted_proxies(entries: tuple[str, ...]) -> int | tuple[Network, ...]:
    """A hop count (one integer entry) or the proxy networks; ConfigError names TRUSTED_PROXIES."""
    if len(entries) == 1 and entries[0].isdigit():
        return int(entries[0])
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as err:
            msg = f"TRUSTED_PROXIES entry {entry!r} is neither an address, a CIDR nor a hop count"
            raise ConfigError(msg) from err
    return tuple(networks)


def wrap(wsgi_app: Any, entries: tuple[str, ...]) -> Any:
    """``wsgi_app`` behind the configured proxy handling (unchanged when no proxy is trusted)."""
    trusted = parse_trusted_proxies(entries)
    if isinstance(trusted, int):
        if trusted == 0:
            return wsgi_app
        log.info("trusting X-Forwarded-For/-Proto of %d proxy hop(s)", trusted)
        return ProxyFix(wsgi_app, x_for=trusted, x_proto=trusted)
    if not trusted:
        return wsgi_app
    log.info("trusting X-Forwarded-For/-Proto from %s", ", ".join(str(n) for n in trusted))
    return TrustedProxies(wsgi_app, trusted)


def init_app(app: Flask, config: ServerConfig) -> None:
    """Put the configured proxy handling in front of the Flask app (TRUSTED_PROXIES)."""
    app.wsgi_app = wrap(app.wsgi_app, config.trusted_proxies)
