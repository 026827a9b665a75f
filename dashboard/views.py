"""Dashboard routes: the page, sign-in, the JSON state, the SSE stream and operator commands.

The blueprint is public to the API's key check (a browser carries a session
cookie, not a key) and does its own: every route but sign-in needs an admin,
from the session or from a key header.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from core.config import ServerConfig
from core.protocol import HEADER_RETRY_AFTER, ErrorCode, RobotAction
from core.server import auth, limits
from core.server.errors import Forbidden, InvalidField, InvalidJson, Unauthorized, error_response
from core.server.identity import Identity
from core.server.robots import Command, RobotStatus, robot_store, validate_robot_id
from core.server.state_store import StateStore, UploadRecord
from dashboard import access, signin_limit, snapshot, upload_button
from dashboard.hub import SnapshotHub
from dashboard.metrics import RequestMetrics

log = logging.getLogger(__name__)

bp = auth.public(limits.exempt(Blueprint("dashboard", __name__, template_folder="templates", static_folder="static")))

CONFIG_EXTENSION = "dashboard_config"
METRICS_EXTENSION = "dashboard_metrics"
STATE_STORE_EXTENSION = "dashboard_state_store"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Comment lines keep proxies and browsers from timing out an idle stream.
SSE_KEEPALIVE_SECONDS = 15.0
# Free disk changes with every write anywhere: refresh it at this pace, not on every tick.
SSE_REFRESH_SECONDS = 10.0
# A page refused a stream (DASHBOARD_SSE_MAX_STREAMS) polls, and asks for a stream again after this long.
SSE_POLL_RETRY_SECONDS = 30
HUB_EXTENSION = "dashboard_hub"


def _config() -> ServerConfig:
    config: ServerConfig = current_app.extensions[CONFIG_EXTENSION]
    return config


def _require_viewer() -> Identity:
    identity = access.viewer()
    if identity is None:
        msg = "sign in at /dashboard/login or send an admin key"
        raise Unauthorized(msg)
    return identity


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    return response


# --- pages -------------------------------------------------------------------------------------
@bp.get("/")
def index() -> Response:
    identity = access.viewer()
    if identity is None:
        return redirect(url_for("dashboard.login"))  # type: ignore[return-value]
    return _page(
        "dashboard/index.html",
        identity=identity,
        csrf_token=access.csrf_token(),
        auth_enabled=_config().auth_enabled,
        actions=[a.value for a in RobotAction],
        upload=upload_button.button(_config()),
    )


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    if request.method == "GET":
        if access.viewer() is not None:
            return redirect(url_for("dashboard.index"))  # type: ignore[return-value]
        return _page("dashboard/login.html", csrf_token=access.csrf_token(), error=None)
    wait = signin_limit.wait_seconds(_config().dashboard_signin_limit)
    if wait is not None:
        return _too_many_sign_ins(wait)
    if not access.csrf_ok():
        return _page("dashboard/login.html", 403, csrf_token=access.csrf_token(), error="Form expired, try again.")
    if access.sign_in(request.form.get("key", "")) is None:
        return _page("dashboard/login.html", 401, csrf_token=access.csrf_token(), error="That is not an admin key.")
    return redirect(url_for("dashboard.index"))  # type: ignore[return-value]


def _too_many_sign_ins(wait: int) -> Response:
    """429 as the sign-in page (a browser) or as the API's JSON error (a script asking for JSON)."""
    message = f"Too many sign-in attempts from your address: try again in {wait} s."
    if request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json":
        response = error_response(429, ErrorCode.RATE_LIMITED, message)
    else:
        response = _page("dashboard/login.html", 429, csrf_token=access.csrf_token(), error=message)
    response.headers[HEADER_RETRY_AFTER] = str(wait)
    return response


@bp.post("/logout")
def logout() -> Response:
    if access.csrf_ok():
        access.sign_out()
    return redirect(url_for("dashboard.login"))  # type: ignore[return-value]


# --- data --------------------------------------------------------------------------------------
def _filter() -> snapshot.UploadFilter:
    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = request.args.get(name, "")
        try:
            value = int(raw) if raw else default
        except ValueError as err:
            msg = f"{name} must be an integer"
            raise InvalidField(msg) from err
        return max(low, min(high, value))

    state = request.args.get("state") or None
    if state is not None and state not in snapshot.UPLOAD_STATES:
        msg = f"state must be one of {', '.join(snapshot.UPLOAD_STATES)}"
        raise InvalidField(msg)
    return snapshot.UploadFilter(
        robot=request.args.get("robot") or None,
        state=state,
        limit=integer("limit", 50, 1, snapshot.MAX_PAGE),
        offset=integer("offset", 0, 0, 10**9),
    )


@dataclass(frozen=True)
class Sources:
    """Everything one state document is built from, read once and shared by every filter."""

    robots: list[RobotStatus]
    records: list[UploadRecord]
    received: dict[str, int]
    commands: list[Command]
    metrics: dict[str, Any]
    storage_info: dict[str, Any]
    read_at: float


def load_sources(app: Flask) -> Sources:
    config: ServerConfig = app.extensions[CONFIG_EXTENSION]
    state_store: StateStore | None = app.extensions.get(STATE_STORE_EXTENSION)
    records, received = snapshot.server_records(state_store, None) if state_store else ([], {})
    metrics: RequestMetrics = app.extensions[METRICS_EXTENSION]
    store = robot_store(app)
    return Sources(
        robots=store.robots(),
        records=records,
        received=received,
        commands=store.recent_commands(20),
        metrics=metrics.series(),
        storage_info=snapshot.storage(config.upload_dir),
        read_at=time.time(),
    )


def build_document(app: Flask, sources: Sources, flt: snapshot.UploadFilter) -> dict[str, Any]:
    config: ServerConfig = app.extensions[CONFIG_EXTENSION]
    return snapshot.build(
        robots=sources.robots,
        records=sources.records,
        received=sources.received,
        commands=sources.commands,
        metrics=sources.metrics,
        storage_info=sources.storage_info,
        offline_after=config.robot_offline_after,
        flt=flt,
        version=app.config.get("VERSION", ""),
        now=sources.read_at,
    )


def state_document(flt: snapshot.UploadFilter) -> dict[str, Any]:
    """A fresh document, read for this request alone (scripts and tests see every change at once)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return build_document(app, load_sources(app), flt)


def make_hub(app: Flask, config: ServerConfig) -> SnapshotHub:
    """The process's shared snapshots: one read of the sources per DASHBOARD_SSE_INTERVAL for all viewers."""
    return SnapshotHub(
        lambda: load_sources(app),
        lambda sources, flt: build_document(app, sources, flt),
        interval=config.sse_interval,
        max_streams=config.sse_max_streams,
    )


def _hub() -> SnapshotHub:
    hub: SnapshotHub = current_app.extensions[HUB_EXTENSION]
    return hub


@bp.get("/api/state")
def api_state() -> Response:
    """The state document; ``live=1`` (the page's polling) shares the process's snapshot instead of reading anew."""
    _require_viewer()
    flt = _filter()
    if request.args.get("live") == "1":
        response = Response(_hub().snapshot(flt).data, mimetype="application/json")
    else:
        response = current_app.json.response(state_document(flt))
    response.headers["Cache-Control"] = "no-store"
    return response


def _sse(event: str, data: str) -> str:
    # ``data`` is compact JSON: it never contains a newline, so one data line suffices.
    return f"event: {event}\ndata: {data}\n\n"


@bp.get("/events")
def events() -> Response:
    """Server-Sent Events: the state document whenever it changes, for at most DASHBOARD_SSE_MAX_SECONDS.

    Bounded streams keep a gthread worker's thread from being pinned forever; the
    page reconnects at once after ``bye`` (and with backoff after an error).
    """
    _require_viewer()
    flt = _filter()
    config = _config()

    hub = _hub()

    def stream() -> Iterator[str]:
        yield "retry: 2000\n\n"
        if not hub.try_open():
            # Over DASHBOARD_SSE_MAX_STREAMS: the page polls the shared snapshot and tries again later.
            log.info("dashboard stream refused: %d open in this process; the page polls", hub.open_streams)
            yield _sse("poll", json.dumps({"retry_seconds": SSE_POLL_RETRY_SECONDS}))
            return
        try:
            yield from _live(hub, flt, config)
        finally:
            hub.close()

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event through at once
    return response


def _live(hub: SnapshotHub, flt: snapshot.UploadFilter, config: ServerConfig) -> Iterator[str]:
    """The shared snapshot whenever it changes, keepalives in between, ``bye`` after DASHBOARD_SSE_MAX_SECONDS.

    ``bye`` comes early when the worker is stopping (``hub.ending``): the page reconnects to another worker.
    """
    started = last_sent = time.monotonic()
    previous = sent_storage = None
    while time.monotonic() - started < config.sse_max_seconds and not hub.ending.is_set():
        current = hub.snapshot(flt)
        storage = current.document["server"]["storage"]
        stale = time.monotonic() - last_sent >= SSE_REFRESH_SECONDS
        if current.comparable != previous or (stale and storage != sent_storage):
            previous, last_sent, sent_storage = current.comparable, time.monotonic(), storage
            yield _sse("state", current.data)
        elif time.monotonic() - last_sent >= SSE_KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keepalive\n\n"
        hub.ending.wait(config.sse_interval)
    yield _sse("bye", "{}")


@bp.post("/api/robots/<robot_id>/commands")
def command(robot_id: str) -> tuple[Response, int]:
    """Queue start/stop/pause/resume/split for a robot; it arrives with the robot's next heartbeat."""
    identity = _require_viewer()
    if not identity.admin:
        raise Forbidden("operator commands need an admin key")
    if not access.csrf_exempt() and not access.csrf_ok():
        msg = f"missing or wrong CSRF token (send the page's token in {access.CSRF_HEADER})"
        raise Forbidden(msg)
    validate_robot_id(robot_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidJson('body must be a JSON object like {"action": "pause"}')
    try:
        action = RobotAction(body.get("action"))
    except ValueError as err:
        msg = f"action must be one of {', '.join(a.value for a in RobotAction)}"
        raise InvalidField(msg) from err
    args = body.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):  # false, 0, "" and [] too: the document says object or null
        raise InvalidField("args must be an object")
    now = time.time()
    queued = Command(robot_id, action, args, issued_by=identity.name, created_at=now, updated_at=now)
    robot_store().enqueue(queued)
    log.info("command queued robot=%s id=%s action=%s by=%s", robot_id, queued.id, action.value, identity.name)
    return current_app.json.response({"success": True, "command": queued.as_json()}), 202
