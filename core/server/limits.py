"""Rate limits (flask-limiter): per robot key when authenticated, else per client address.

Many robots may share one cellular NAT address, so an authenticated caller is
counted by its key name; anonymous callers by the address ProxyFix/`proxies`
derived. The two get different budgets: anonymous callers the seed's numbers
(``RATELIMIT_INIT`` 20/hour, ``RATELIMIT_DEFAULT`` 200/day;50/hour…), which
guard against strangers; a key the ``RATELIMIT_KEY_*`` budgets, sized from
what a recorder really sends (two uploads per split, one init + chunks +
finalize + status polls each) with headroom, so a robot's own continuous
traffic never meets a 429. Upload routes get limits of their own
(``ROUTE_LIMITS``); every other route the default pair. A missing
flask-limiter is a loud warning, not a crash: the seed promises the server
still starts.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request
from limits import parse_many

from core.config import ConfigError, ServerConfig
from core.protocol import (
    CHUNK_PATH,
    FINALIZE_PATH,
    HEADER_RETRY_AFTER,
    HEALTH_PATH,
    HEARTBEAT_PATH,
    INIT_PATH,
    UPLOAD_PATH,
    UPLOADS_PATH,
    ErrorCode,
)
from core.server import auth_limits, limit_storage
from core.server.auth import authenticated_name
from core.server.errors import error_response
from core.server.tus import protocol as tus

log = logging.getLogger("upload_server.limits")

EXTENSION = "rate_limiter"
EXEMPT_ATTRIBUTE = "ratelimit_exempt"
# Load balancers poll /health every few seconds from one address.
EXEMPT_PATHS = frozenset({HEALTH_PATH})
KEY_PREFIX = "upload"
Target = TypeVar("Target", bound=Any)


@dataclass(frozen=True)
class RouteLimit:
    """A route (Flask rule + method) with a limit of its own instead of RATELIMIT_DEFAULT."""

    path: str
    method: str
    limit: Callable[[ServerConfig], str]
    # Per API key; None: the same budget as anonymous callers.
    key_limit: Callable[[ServerConfig], str] | None = None


# Extend this table when a route needs more than the default budget; the
# OpenAPI document describes 429 on every route either way.
ROUTE_LIMITS: tuple[RouteLimit, ...] = (
    RouteLimit(INIT_PATH, "POST", lambda c: c.ratelimit_init, lambda c: c.ratelimit_key_init),
    RouteLimit(CHUNK_PATH, "PUT", lambda c: c.ratelimit_chunk, lambda c: c.ratelimit_key_chunk),
    RouteLimit(UPLOAD_PATH, "GET", lambda c: c.ratelimit_status, lambda c: c.ratelimit_key_status),
    RouteLimit(FINALIZE_PATH, "POST", lambda c: c.ratelimit_finalize, lambda c: c.ratelimit_key_finalize),
    RouteLimit(UPLOADS_PATH, "GET", lambda c: c.ratelimit_list),
    RouteLimit(HEARTBEAT_PATH, "POST", lambda c: c.heartbeat_rate_limit),
    # tus: creation counts like an init, a PATCH like a chunk, a HEAD like a status request.
    RouteLimit(tus.TUS_COLLECTION_PATH, "POST", lambda c: c.ratelimit_init, lambda c: c.ratelimit_key_init),
    RouteLimit(tus.TUS_UPLOAD_PATH, "PATCH", lambda c: c.ratelimit_chunk, lambda c: c.ratelimit_key_chunk),
    RouteLimit(tus.TUS_UPLOAD_PATH, "HEAD", lambda c: c.ratelimit_status, lambda c: c.ratelimit_key_status),
)


def exempt(target: Target) -> Target:
    """Exempt a view or a whole blueprint from rate limits (e.g. static files; it must limit itself otherwise)."""
    setattr(target, EXEMPT_ATTRIBUTE, True)
    return target


def client_key() -> str:
    """The bucket a request is counted in: the key's name, else the client address."""
    name = authenticated_name()
    return f"key:{name}" if name else f"addr:{request.remote_addr or 'unknown'}"


def route_limit(config: ServerConfig) -> Callable[[], str]:
    """The limit of the current request: its route's own (``ROUTE_LIMITS``), else the default pair.

    A caller that proved a key gets the ``RATELIMIT_KEY_*`` budget, anyone else the seed's
    per-address one; both count in the bucket ``client_key`` chose, so a key never spends an
    address's budget and a stranger never spends a robot's. Given to flask-limiter as a dynamic
    default limit rather than as view decorators: a decorated view is evaluated in its wrapper
    *and* again by flask-limiter's default pass before the request, which doubled the limiter's
    per-request cost (BENCHMARKS.md, protection). As a default, every request is evaluated once;
    ``default_limits_per_method`` keeps one bucket per route and method.
    """
    table = {
        (route.path, route.method): (route.limit(config), (route.key_limit or route.limit)(config))
        for route in ROUTE_LIMITS
    }
    default = (config.ratelimit_default, config.ratelimit_key_default)

    def limit() -> str:
        rule = request.url_rule.rule if request.url_rule is not None else None
        anonymous, per_key = table.get((rule, request.method), default)
        return per_key if authenticated_name() else anonymous

    return limit


# Settings whose values reach flask-limiter through ``route_limit``, which it parses only per request.
_LIMIT_SETTINGS = (
    "ratelimit_default",
    "ratelimit_init",
    "ratelimit_chunk",
    "ratelimit_status",
    "ratelimit_finalize",
    "ratelimit_key_default",
    "ratelimit_key_init",
    "ratelimit_key_chunk",
    "ratelimit_key_status",
    "ratelimit_key_finalize",
)


def check_limits(config: ServerConfig) -> None:
    """Fail at start, naming the variable, rather than on the first request that meets a bad limit."""
    for name in _LIMIT_SETTINGS:
        value = getattr(config, name)
        try:
            parse_many(value)
        except ValueError as err:
            env = ServerConfig.__dataclass_fields__[name].metadata["env"]
            msg = f"{env}={value!r} is not a rate limit (e.g. '60 per minute', ';'-separated)"
            raise ConfigError(msg) from err


def _is_exempt() -> bool:
    # Preflights are answered by Flask without running a view; counting them would halve a browser's budget.
    if request.method == "OPTIONS":
        return True
    if request.url_rule is not None and request.url_rule.rule in EXEMPT_PATHS:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, EXEMPT_ATTRIBUTE, False):
        return True
    return any(getattr(current_app.blueprints.get(name), EXEMPT_ATTRIBUTE, False) for name in request.blueprints)


def _too_many_requests(err: Any) -> Response:
    return error_response(
        429,
        ErrorCode.RATE_LIMITED,
        f"rate limit exceeded ({err.description}); retry after the number of seconds in Retry-After",
    )


def _exact_retry_after(response: Response) -> Response:
    """Tell a 429'd client the whole seconds until its window reopens, rounded up and never 0.

    flask-limiter derives ``Retry-After`` from an integer reset time and then
    truncates (``int(int(reset + 1) - now)``): in a window's last second it says
    0 and an obedient client is refused again at once, elsewhere it adds up to
    a second of needless waiting. The window's own reset time gives the exact wait.
    """
    limiter = current_app.extensions.get(EXTENSION)
    limit = limiter.current_limit if limiter is not None and response.status_code == 429 else None
    if limit is None:
        return response
    try:
        reset = float(limit.window.reset_time)
    except Exception:  # storage unreachable: flask-limiter logged it; keep its header
        return response
    response.headers[HEADER_RETRY_AFTER] = str(max(1, math.ceil(reset - time.time())))
    return response


def _load_flask_limiter() -> Any | None:
    try:
        return importlib.import_module("flask_limiter")
    except ImportError as err:
        log.warning(
            "flask-limiter is not importable (%s): the server runs WITHOUT rate limits. "
            "Install it: pip install 'flask-limiter>=3.5,<5'",
            err,
        )
        return None


def init_app(app: Flask, config: ServerConfig) -> Any | None:
    """Limit every route; call after all routes are registered and after ``auth.init_app``."""
    if not config.ratelimit_enabled:
        log.warning("RATELIMIT_ENABLED=0: no rate limits are applied")
        return None
    flask_limiter = _load_flask_limiter()
    if flask_limiter is None:
        return None
    check_limits(config)
    limiter = flask_limiter.Limiter(
        client_key,
        default_limits=[route_limit(config)],
        default_limits_per_method=True,
        storage_uri=limit_storage.storage_uri(config.ratelimit_storage_uri),  # memory://: no thread per request
        headers_enabled=True,
        strategy="fixed-window",
        key_prefix=KEY_PREFIX,
        # An unreachable redis must not stop uploads: count in memory until it is back.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.request_filter(_is_exempt)
    # after_request hooks run in reverse order of registration: this one runs after flask-limiter's headers.
    app.after_request(_exact_retry_after)
    limiter.init_app(app)
    app.register_error_handler(flask_limiter.RateLimitExceeded, _too_many_requests)
    auth_limits.init_app(app, limiter, config, KEY_PREFIX)
    app.extensions[EXTENSION] = limiter
    log.info(
        "rate limits per address: default=%r init=%r chunk=%r status=%r finalize=%r; "
        "per key: default=%r init=%r chunk=%r status=%r finalize=%r; storage=%s",
        config.ratelimit_default,
        config.ratelimit_init,
        config.ratelimit_chunk,
        config.ratelimit_status,
        config.ratelimit_finalize,
        config.ratelimit_key_default,
        config.ratelimit_key_init,
        config.ratelimit_key_chunk,
        config.ratelimit_key_status,
        config.ratelimit_key_finalize,
        config.ratelimit_storage_uri.split("@")[-1],
    )
    return limiter
