"""A small per-address budget of dashboard sign-in attempts, so admin keys cannot be guessed at speed.

The dashboard blueprint is exempt from the API's rate limits (a page open all
day polls a lot), so the sign-in POST counts itself, in the same rate-limit
storage as every other limit (``RATELIMIT_STORAGE_URI``: per process with
``memory://``, shared by all workers and hosts with redis). Every attempt
counts, right or wrong: a legitimate operator needs one. With rate limits off
(``RATELIMIT_ENABLED=0``), sign-in is not limited.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import current_app, request
from limits import parse

from core.server import limits as server_limits

log = logging.getLogger(__name__)

SCOPE = "dashboard-signin"


def wait_seconds(limit: str) -> int | None:
    """Count one attempt of this client address; the seconds until it may try again when over ``limit``."""
    limiter: Any = current_app.extensions.get(server_limits.EXTENSION)
    if limiter is None:
        return None
    item = parse(limit)
    address = request.remote_addr or "unknown"
    try:
        strategy = limiter.limiter
        if strategy.hit(item, SCOPE, address):
            return None
        reset_at, _remaining = strategy.get_window_stats(item, SCOPE, address)
    except Exception:
        # Like the API's limits (swallow_errors): an unreachable redis must not lock operators out.
        log.exception("dashboard: sign-in limit storage failed; attempt from %s not limited", address)
        return None
    log.warning("dashboard: sign-in attempts from %s over the limit of %s", address, limit)
    return max(1, math.ceil(reset_at - time.time()))
