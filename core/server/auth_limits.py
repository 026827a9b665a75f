"""A per-address budget of requests with a missing or wrong API key (``RATELIMIT_UNAUTHENTICATED``).

Authentication answers 401 before the API's limits count anything, so without
this a key-guessing or flooding client would be limited only by nginx. Each
401 (of the API's key check, and of the dashboard's, which is exempt from the
API's limits and checks keys itself) is counted against the client address (as
``proxies`` resolved it, so only trusted proxies choose it) in the limiter's
own storage: per process with ``memory://``, exact across workers and hosts
with redis. Over the budget the reply is a JSON 429 with ``Retry-After`` and
the ``X-RateLimit-*`` headers instead of the 401. A request that proves a key
is never counted and never refused here: robots behind one NAT address keep
their own per-key budgets even while a stranger on that address is throttled.
Public routes (``/health``) never ask for a key, so they are never counted.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import Flask, Response, request
from limits import RateLimitItem, parse

from core.config import ConfigError, ServerConfig
from core.protocol import (
    HEADER_RATELIMIT_LIMIT,
    HEADER_RATELIMIT_REMAINING,
    HEADER_RATELIMIT_RESET,
    HEADER_RETRY_AFTER,
    ErrorCode,
)
from core.server.errors import Unauthorized, error_response

log = logging.getLogger("upload_server.auth_limits")

SCOPE = "unauthenticated"


def parse_limit(text: str) -> RateLimitItem:
    """The limit of ``RATELIMIT_UNAUTHENTICATED``; ConfigError names the variable when it does not parse."""
    try:
        return parse(text)
    except ValueError as err:
        msg = f"RATELIMIT_UNAUTHENTICATED={text!r} is not a rate limit (e.g. '30 per minute')"
        raise ConfigError(msg) from err


class FailedAuthLimit:
    """Counts every 401 per client address and turns the ones over the budget into 429s."""

    def __init__(self, limiter: Any, item: RateLimitItem, prefix: str) -> None:
        self.limiter = limiter
        self.item = item
        self.prefix = prefix

    def __call__(self, err: Unauthorized) -> Response:
        address = request.remote_addr or "unknown"
        try:
            strategy = self.limiter.limiter  # the in-memory fallback while redis is down
            allowed = strategy.hit(self.item, self.prefix, SCOPE, address)
            reset_at, remaining = strategy.get_window_stats(self.item, self.prefix, SCOPE, address)
        except Exception:
            # Like the API's limits (swallow_errors): an unreachable storage must not turn 401s into 500s.
            log.exception("unauthenticated limit storage failed; request from %s not counted", address)
            return self._unauthorized(err)
        response = self._unauthorized(err) if allowed else self._too_many(address)
        response.headers[HEADER_RATELIMIT_LIMIT] = str(self.item.amount)
        response.headers[HEADER_RATELIMIT_REMAINING] = str(remaining)
        response.headers[HEADER_RATELIMIT_RESET] = str(math.ceil(reset_at))
        if not allowed:
            response.headers[HEADER_RETRY_AFTER] = str(max(1, math.ceil(reset_at - time.time())))
        return response

    @staticmethod
    def _unauthorized(err: Unauthorized) -> Response:
        response = error_response(401, err.error_code, err.description or "", **err.details)
        for name, value in err.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def _too_many(self, address: str) -> Response:
        log.warning(
            "unauthenticated requests from %s over the limit of %s: method=%s path=%s",
            address,
            self.item,
            request.method,
            request.path,
        )
        return error_response(
            429,
            ErrorCode.RATE_LIMITED,
            f"too many requests without a valid API key from this address ({self.item}); "
            "retry after the number of seconds in Retry-After",
        )


def init_app(app: Flask, limiter: Any, config: ServerConfig, prefix: str) -> None:
    """Count every 401 in ``limiter``'s storage under ``prefix`` (only when rate limits are on).

    Registered for the base ``Unauthorized``: the API's ``UnauthorizedError`` and the dashboard's
    refusals alike, so a wrong key costs the same wherever it is tried.
    """
    item = parse_limit(config.ratelimit_unauthenticated)
    app.register_error_handler(Unauthorized, FailedAuthLimit(limiter, item, prefix))
    log.info("unauthenticated requests limited to %s per client address", item)
