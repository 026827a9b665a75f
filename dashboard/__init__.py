"""Operators' live status dashboard, served by the upload server at ``/dashboard/``."""

from __future__ import annotations

from flask import Flask, Response, request

from core.config import ServerConfig
from core.server import db, robots
from core.server.state_store import StateStore
from dashboard import (
    access,
    recordings,  # noqa: F401 - its routes hang on views.bp
    upload_button,
    views,
)
from dashboard.metrics import open_request_metrics

URL_PREFIX = "/dashboard"


def init_app(app: Flask, config: ServerConfig, state_store: StateStore | None = None) -> None:
    """Mount the heartbeat route and the dashboard; ``state_store`` supplies the server's upload records."""
    robots.init_app(app, config)
    access.init_app(app, config)
    metrics = open_request_metrics(config, app.extensions.get(db.EXTENSION))  # the state database
    app.extensions[views.CONFIG_EXTENSION] = config
    app.extensions[views.METRICS_EXTENSION] = metrics
    app.extensions[views.STATE_STORE_EXTENSION] = state_store
    app.extensions[views.HUB_EXTENSION] = views.make_hub(app, config)
    app.register_blueprint(views.bp, url_prefix=URL_PREFIX)
    upload_button.check(app, config)

    @app.after_request
    def count_request(response: Response) -> Response:
        # The dashboard's own polling would drown the robots' traffic in the request counts.
        if request.blueprint != views.bp.name:
            metrics.record(response.status_code, request.content_length or 0)
        return response
