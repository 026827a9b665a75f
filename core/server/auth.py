"""Who may call the API: every request but a few public ones must carry a valid API key.

``init_app`` installs a ``before_request`` hook that sets ``flask.g.identity``
from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, or answers 401.
Routes that must stay open (``/health`` for load balancers, ``/openapi.json``,
the dashboard's sign-in page) are declared with :func:`public`; the dashboard
adds its session-cookie sign-in with :func:`add_identity_loader`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, request

from core.config import ServerConfig
from core.protocol import AUTH_SCHEME, HEADER_API_KEY, HEADER_AUTHORIZATION, HEALTH_PATH
from core.server import db, endpoints
from core.server.endpoints import Target
from core.server.errors import Unauthorized
from core.server.identity import ANONYMOUS, Identity
from core.server.keys import EXTENSION as KEYS_EXTENSION
from core.server.keys import key_store, keys_cli, open_key_store

log = logging.getLogger("upload_server.auth")

PUBLIC_ATTRIBUTE = "auth_public"
LOADERS_EXTENSION = "auth_identity_loaders"
ENABLED_EXTENSION = "auth_enabled"
# Paths open to everyone whoever registers them; the OpenAPI document describes a public API anyway.
PUBLIC_PATHS = frozenset({HEALTH_PATH, "/openapi.json"})

IdentityLoader = Callable[[], "Identity | None"]


class UnauthorizedError(Unauthorized):
    """An API client without a valid key: the challenge header names the scheme to use."""

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), ("WWW-Authenticate", f'{AUTH_SCHEME} realm="upload"')]


def public(target: Target) -> Target:
    """Mark a view function or a whole blueprint as reachable without a key.

    A public view that needs to know its caller does its own check (for
    example the dashboard's session cookie) or calls :func:`identity_for_key`.
    """
    return endpoints.mark(target, PUBLIC_ATTRIBUTE)


def add_identity_loader(app: Flask, loader: IdentityLoader) -> None:
    """Accept another credential (e.g. a dashboard session cookie) when a request carries no key."""
    app.extensions.setdefault(LOADERS_EXTENSION, []).append(loader)


def identity_for_key(key: str) -> Identity | None:
    """The identity of an API key, or None if it is unknown, malformed or revoked."""
    return key_store().identity_for(key)


def presented_key() -> str | None:
    """The key of the current request, from ``Authorization: Bearer`` or ``X-API-Key``."""
    header = request.headers.get(HEADER_AUTHORIZATION)
    if header:
        scheme, _, value = header.strip().partition(" ")
        return value.strip() if scheme.lower() == AUTH_SCHEME.lower() and value.strip() else ""
    value = request.headers.get(HEADER_API_KEY)
    return None if value is None else value.strip()


def _is_app_static(endpoint: str) -> bool:
    return endpoint == "static"


def _is_public() -> bool:
    # Preflights carry no credentials by design; unroutable requests get their 404/405,
    # which reveal only the route shapes the public OpenAPI document lists anyway.
    if request.method == "OPTIONS" or request.routing_exception is not None or request.url_rule is None:
        return True
    if request.url_rule.rule in PUBLIC_PATHS:
        return True
    return endpoints.is_marked(PUBLIC_ATTRIBUTE, static=_is_app_static)


def _authenticate() -> None:
    if not current_app.extensions[ENABLED_EXTENSION]:
        g.identity = ANONYMOUS
        return
    if _is_public():
        return
    key = presented_key()
    if key is None:
        for loader in current_app.extensions.get(LOADERS_EXTENSION, []):
            identity = loader()
            if identity is not None:
                g.identity = identity
                return
        log.info("auth rejected: no key method=%s path=%s client=%s", request.method, request.path, request.remote_addr)
        msg = f"an API key is required ({HEADER_AUTHORIZATION}: {AUTH_SCHEME} <key> or {HEADER_API_KEY}: <key>)"
        raise UnauthorizedError(msg)
    identity = identity_for_key(key) if key else None
    if identity is None:
        log.warning(
            "auth rejected: invalid or revoked key method=%s path=%s client=%s",
            request.method,
            request.path,
            request.remote_addr,
        )
        raise UnauthorizedError("the API key is invalid or revoked")
    g.identity = identity


def authenticated_name() -> str | None:
    """The name of a caller that proved a key (or signed in), for per-robot rate limits; None otherwise."""
    identity = g.get("identity")
    if isinstance(identity, Identity) and identity is not ANONYMOUS:
        return identity.name
    return None


def init_app(app: Flask, config: ServerConfig) -> None:
    """Open the key store, add the ``keys`` CLI group and check every request (register before limits)."""
    app.extensions[KEYS_EXTENSION] = open_key_store(config, app.extensions.get(db.EXTENSION))
    app.extensions[ENABLED_EXTENSION] = config.auth_enabled
    app.cli.add_command(keys_cli)
    # First of all hooks: rate limits and every view key on the identity it sets.
    app.before_request_funcs.setdefault(None, []).insert(0, _authenticate)
    if not config.auth_enabled:
        log.warning(
            "AUTH_ENABLED=0: API keys are NOT checked; every client acts as admin and can read and delete "
            "all uploads. Use only on a closed lab network."
        )
