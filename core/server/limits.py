"""Rate limits: per robot key when authenticated, else per client address, counted with ``limits``.

Many robots may share one cellular NAT address, so an authenticated caller is
counted by its key name; anonymous callers by the address ProxyFix/`proxies`
derived. The two get different budgets: anonymous callers the seed's numbers
(``RATELIMIT_INIT`` 20/hour, ``RATELIMIT_DEFAULT`` 200/day;50/hour…), which
guard against strangers; a key the ``RATELIMIT_KEY_*`` budgets, sized from
what a recorder really sends (two uploads per split, one init + chunks +
finalize + status polls each) with headroom, so a robot's own continuous
traffic never meets a 429. Upload routes get limits of their own
(``ROUTE_LIMITS``); every other route the default pair.

The counting is the ``limits`` library's fixed-window strategy over
``RATELIMIT_STORAGE_URI``, called from one before-request hook. This used to be
flask-limiter, which runs ``limits`` the same way but spent ~200-540 µs a
request on its own machinery (resolving dynamic limits, exemption scopes, its
request context, header injection), more than the status poll itself
(BENCHMARKS.md, protection). Here the limits are parsed once per route at
start, and a request costs its storage hits. What flask-limiter did is kept:
the same storage keys (a redis shared with an older server keeps its
counters), ``X-RateLimit-*`` and ``Retry-After`` on every limited route's
reply, the first breached limit reported, a fall-back to per-process memory
counters while redis is unreachable, and storage errors never failing a request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from core.config import ConfigError, ServerConfig
from core.protocol import (
    CHUNK_PATH,
    FINALIZE_PATH,
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    HEADER_RETRY_AFTER,
    HEALTH_PATH,
    HEARTBEAT_PATH,
    INIT_PATH,
    UPLOAD_PATH,
    UPLOADS_PATH,
    ErrorCode,
)
from core.server import auth_limits, endpoints, limit_storage
from core.server.auth import authenticated_name
from core.server.endpoints import Target
from core.server.errors import error_response
from core.server.tus import protocol as tus

log = logging.getLogger("upload_server.limits")

EXTENSION = "rate_limiter"
EXEMPT_ATTRIBUTE = "ratelimit_exempt"
# Load balancers poll /health every few seconds from one address.
EXEMPT_PATHS = frozenset({HEALTH_PATH})
KEY_PREFIX = "upload"
# A storage that failed is tried again at most this often while requests count in memory.
RECHECK_SECONDS = 10.0
# What ``check_request`` leaves for ``add_headers``: the limit to report, and its storage identifiers.
_CURRENT = "rate_limit_current"
# What ``Limiter._counted`` returns when neither the storage nor the memory fallback could count.
_FAILED = object()


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
    return endpoints.mark(target, EXEMPT_ATTRIBUTE)


# Every RATELIMIT_* setting parsed by ``RouteLimits``: a bad one must stop the start, naming it.
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


Limits = tuple[RateLimitItem, ...]


def _parse(text: str) -> Limits:
    # Checked in order, tightest window first, like flask-limiter: the first breached one is reported.
    return tuple(sorted(parse_many(text)))


class RouteLimits:
    """The parsed limits of every route and method, per address and per key: parsed once, looked up per request."""

    def __init__(self, config: ServerConfig) -> None:
        self.table: dict[tuple[str, str], tuple[Limits, Limits]] = {
            (route.path, route.method): (_parse(route.limit(config)), _parse((route.key_limit or route.limit)(config)))
            for route in ROUTE_LIMITS
        }
        self.default = (_parse(config.ratelimit_default), _parse(config.ratelimit_key_default))

    def for_request(self, rule: str, method: str, authenticated: bool) -> Limits:
        """A key's budget (``RATELIMIT_KEY_*``) for a caller that proved one, the per-address one otherwise."""
        anonymous, per_key = self.table.get((rule, method), self.default)
        return per_key if authenticated else anonymous


class Limiter:
    """Fixed-window counters in ``RATELIMIT_STORAGE_URI``, in per-process memory while that storage is unreachable.

    ``limiter`` and ``storage`` are what the 401 budget (``auth_limits``), the dashboard's sign-in
    budget and ``/health/detailed`` use, so every limit counts in the same place.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.routes = RouteLimits(config)
        self.storage: Storage = storage_from_string(limit_storage.storage_uri(config.ratelimit_storage_uri))
        self._primary = FixedWindowRateLimiter(self.storage)
        self._fallback = FixedWindowRateLimiter(limit_storage.SweptMemoryStorage())
        self._storage_dead = False
        self._next_check = 0.0
        self._check_lock = threading.Lock()

    @property
    def limiter(self) -> RateLimiter:
        """The strategy to count with now: the configured storage's, or the memory fallback's while it is down."""
        return self._fallback if self._storage_dead else self._primary

    def check_request(self) -> Response | None:
        """Count the request in each limit of its route; a JSON 429 when one is spent (a before-request hook)."""
        if self._is_exempt():
            return None
        name = authenticated_name()
        key = f"key:{name}" if name else f"addr:{request.remote_addr or 'unknown'}"
        method = request.method
        # The bucket flask-limiter used for a per-method default limit: endpoint and method.
        identifiers = (KEY_PREFIX, key, f"{request.endpoint}:{method}")
        items = self.routes.for_request(request.url_rule.rule, method, name is not None)  # type: ignore[union-attr]
        self._recover()
        breached = self._counted(lambda strategy: _first_spent(strategy, items, identifiers))
        if breached is _FAILED:
            return None
        setattr(g, _CURRENT, (breached or items[0], identifiers))  # the breached limit is reported, else the first
        if breached is None:
            return None
        log.info("ratelimit %s (%s) exceeded at endpoint: %s", breached, key, identifiers[2])
        return error_response(
            429,
            ErrorCode.RATE_LIMITED,
            f"rate limit exceeded ({breached}); retry after the number of seconds in Retry-After",
        )

    def add_headers(self, response: Response) -> Response:
        """``X-RateLimit-*`` of the limit reported for this request, and ``Retry-After`` (an after-request hook).

        On a 429, ``Retry-After`` is the whole seconds until the window reopens, rounded up and never 0:
        flask-limiter truncated (``int(int(reset + 1) - now)``), so in a window's last second it said 0 and
        an obedient client was refused again at once. Other replies keep flask-limiter's value, and a
        ``Retry-After`` the view set (a 503) is kept unless the window reopens later.
        """
        current = g.pop(_CURRENT, None)
        if current is None:
            return response
        item, identifiers = current
        window = self._counted(lambda strategy: strategy.get_window_stats(item, *identifiers))
        if window is _FAILED:
            return response
        reset, remaining = window
        now = time.time()
        headers = response.headers
        headers.add(HEADER_RATELIMIT_LIMIT, str(item.amount))
        headers.add(HEADER_RATELIMIT_REMAINING, str(remaining))
        reset_at = int(reset + 1)
        headers.add(HEADER_RATELIMIT_RESET, str(reset_at))
        if response.status_code == 429:
            headers[HEADER_RETRY_AFTER] = str(max(1, math.ceil(reset - now)))
            return response
        existing = headers.get(HEADER_RETRY_AFTER)
        if existing is not None and existing.isdigit():
            reset_at = max(int(now + int(existing)), reset_at)
        headers[HEADER_RETRY_AFTER] = str(int(reset_at - now))
        return response

    def _counted(self, operation: Callable[[RateLimiter], Any]) -> Any:
        """``operation`` on the current strategy; once more in memory if the storage fails (``_FAILED``: both did).

        A storage error never fails the request: it is served without that limit, as with flask-limiter's
        ``swallow_errors``; an unreachable redis turns into per-process counting until it is back.
        """
        try:
            return operation(self.limiter)
        except Exception:
            if self._fall_back():
                try:
                    return operation(self.limiter)
                except Exception:
                    log.exception("rate limit memory counters failed; request not limited")
                    return _FAILED
            log.exception("rate limit storage failed; request not limited")
            return _FAILED

    def _fall_back(self) -> bool:
        """Count in memory from now on; False when already doing so (the memory counters failed: give up)."""
        if self._storage_dead:
            return False
        log.warning("Rate limit storage unreachable - falling back to in-memory storage")
        self._storage_dead = True
        self._next_check = time.time() + RECHECK_SECONDS
        return True

    def _recover(self) -> None:
        """While counting in memory, ask the configured storage again every RECHECK_SECONDS (one request does)."""
        if not self._storage_dead or time.time() < self._next_check or not self._check_lock.acquire(blocking=False):
            return
        try:
            self._next_check = time.time() + RECHECK_SECONDS
            if self.storage.check():
                log.info("Rate limit storage recovered")
                self._storage_dead = False
        finally:
            self._check_lock.release()

    def _is_exempt(self) -> bool:
        # Unroutable requests (404/405) have no endpoint and get their error uncounted, as with flask-limiter;
        # preflights are answered without a view, and counting them would halve a browser's budget.
        endpoint = request.endpoint
        if endpoint is None or request.method == "OPTIONS" or request.url_rule.rule in EXEMPT_PATHS:  # type: ignore[union-attr]
            return True
        return endpoints.is_marked(EXEMPT_ATTRIBUTE, static=_is_static)


def _first_spent(strategy: RateLimiter, items: Limits, identifiers: tuple[str, ...]) -> RateLimitItem | None:
    """Spend one request of each limit in order; the first one exhausted (the later ones are not spent)."""
    for item in items:
        if not strategy.hit(item, *identifiers):
            return item
    return None


def _is_static(endpoint: str) -> bool:
    """The app's and every blueprint's static files."""
    return endpoint.rsplit(".", 1)[-1] == "static"


def init_app(app: Flask, config: ServerConfig) -> Limiter | None:
    """Limit every route; call after all routes are registered and after ``auth.init_app``."""
    if not config.ratelimit_enabled:
        log.warning("RATELIMIT_ENABLED=0: no rate limits are applied")
        return None
    check_limits(config)
    limiter = Limiter(config)
    app.before_request(limiter.check_request)
    app.after_request(limiter.add_headers)
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
