"""The app factory: configuration, stores, service, routes and background work wired in one readable sequence."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask

import dashboard
from core.config import ServerConfig
from core.server import (
    auth,
    backup,
    bags_api,
    cli,
    db,
    health,
    jobs,
    limits,
    logs,
    metrics,
    openapi,
    proxies,
    robots,
    security,
    signed_links,
)
from core.server.api import api
from core.server.blobs import open_blob_store
from core.server.errors import register_error_handlers
from core.server.finalize import Finalizer
from core.server.service import UploadService
from core.server.state_store import open_state_store
from core.server.tus import views as tus

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class UploadApp(Flask):
    """Flask, asking once per hook or view whether it is ``async def`` instead of on every call.

    Flask passes every before- and after-request hook and the view through ``ensure_sync``
    on each request (15 calls for a status poll here, ~5 % of its cost in process,
    BENCHMARKS.md, protection), and the answer for a given function never changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = self._sync[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # an unhashable callable: asked every time, as Flask does
            return super().ensure_sync(func)


def resolve_config(config: ServerConfig | Mapping[str, Any] | None) -> ServerConfig:
    """A ServerConfig as is; a mapping of field names overrides the environment (tests pass ``upload_dir``…)."""
    if isinstance(config, ServerConfig):
        return config
    overrides = dict(config or {})
    if "upload_dir" in overrides:
        overrides["upload_dir"] = Path(overrides["upload_dir"])
    return ServerConfig.from_env(**overrides)


def configure_logging(config: ServerConfig) -> None:
    """Operator log lines in the seed's format on stderr (journald/gunicorn collect them)."""
    logger = logging.getLogger("upload_server")
    logger.setLevel(config.log_level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logs.formatter(config.log_format, LOG_FORMAT))
        logger.addHandler(handler)


def create_app(config: ServerConfig | Mapping[str, Any] | None = None) -> Flask:
    settings = resolve_config(config)
    configure_logging(settings)

    app = UploadApp(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_chunk_size
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["server_config"] = settings

    engine = db.checked_engine(settings)  # STATE_STORE_URI; refuses an outdated schema
    state = open_state_store(engine)
    blobs = open_blob_store(settings.blob_store_uri, settings.upload_dir)  # BLOB_STORE_URI
    service = UploadService(settings, state, blobs)
    app.extensions[db.EXTENSION] = engine
    app.extensions["state_store"] = state
    app.extensions["blob_store"] = blobs
    app.extensions["upload_service"] = service

    register_error_handlers(app)
    app.register_blueprint(api)
    tus_service = tus.init_app(app)  # tus 1.0.0 under /files/ on the same service and stores
    bags_api.init_app(app)  # GET /bags, /bags/<id>, its download; DELETE; flask bags delete
    signed_links.init_app(app)  # POST /bags/<id>/links, GET /signed/<upload_id> (no key, Range, CORS)
    dashboard.init_app(app, settings, state)  # heartbeats, robot commands and /dashboard/
    service.pruners.append(robots.robot_store(app).prune)  # old commands and silent robots go with each sweep
    cli.init_app(app)  # sweep, db upgrade
    metrics.init_app(app, settings)  # GET /metrics, fed by events and request hooks
    health.init_app(app, settings)  # GET /health/detailed
    backup.init_app(app, settings)  # flask --app upload_server backup create|restore|verify
    # Protection after every route: limits wrap the registered views, proxies the WSGI app.
    openapi.init_app(app)
    auth.init_app(app, settings)
    security.init_app(app, settings)
    limits.init_app(app, settings)
    proxies.init_app(app, settings)
    jobs.init_app(
        app,
        jobs.JobRunner(
            service,
            Finalizer(
                settings,
                state,
                blobs,
                clock=lambda: service.clock(),
                known_sha256=tus_service.store.received_sha256,
            ),
        ),
    )
    return app


def close_app(app: Flask) -> None:
    """Stop the app's background threads, then close its database connections (worker exit, tests).

    The order matters: a thread still working would check a connection out of an engine already
    disposed, and that connection would later be dropped unclosed.
    """
    app.extensions["job_runner"].stop()
    app.extensions[dashboard.views.METRICS_EXTENSION].close()
    app.extensions["state_store"].close()
