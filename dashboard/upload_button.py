"""The "Upload a bag" button: what the page needs to drive Uppy against the server's tus endpoint.

Every signed-in dashboard viewer is an admin (``dashboard.access``), and an admin
may upload, so the button shows for everyone who sees the page. It is disabled,
with the reason on the page, when the Uppy files are not installed
(``dashboard.vendor``): the dashboard itself never breaks for a missing asset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app

from core.config import ServerConfig
from core.protocol import UPLOAD_PREFIX
from core.server.tus.protocol import TUS_COLLECTION_PATH
from core.server.tus.service import TusService
from core.server.tus.views import EXTENSION as TUS_EXTENSION
from dashboard import vendor

log = logging.getLogger("upload_server.dashboard")


@dataclass(frozen=True)
class UploadButton:
    ready: bool
    endpoint: str
    chunk_size: int
    max_file_size: int
    streams: int
    status_url: str
    hint: str
    files: dict[str, str]


def streams(app: Flask, config: ServerConfig) -> int:
    """DASHBOARD_UPLOAD_STREAMS where the tus front can concatenate partial uploads (local disk), else 1."""
    service: TusService | None = app.extensions.get(TUS_EXTENSION)
    return config.dashboard_upload_streams if service is not None and service.concatenation else 1


def check(app: Flask, config: ServerConfig) -> None:
    """At start: say once why the button is disabled, or why it sends one stream where more were asked for."""
    vendor.report_missing()
    if config.dashboard_upload_streams > 1 and streams(app, config) == 1:
        log.warning(
            "dashboard: DASHBOARD_UPLOAD_STREAMS=%d ignored: this blob store cannot concatenate tus partial uploads; "
            "the upload button sends one stream per file",
            config.dashboard_upload_streams,
        )


def button(config: ServerConfig) -> UploadButton:
    """The template's view of the button; ``ready`` is checked per page view, so `make assets` needs no restart."""
    return UploadButton(
        ready=not vendor.missing(),
        endpoint=TUS_COLLECTION_PATH,  # tus 1.0 (core/server/tus), same origin as the page
        # One PATCH per chunk: the server's advertised chunk size, well under every body limit (MAX_CHUNK_SIZE, nginx).
        chunk_size=config.default_chunk_size,
        max_file_size=config.max_file_size,
        streams=streams(current_app, config),
        status_url=UPLOAD_PREFIX + "/",
        hint=vendor.INSTALL_HINT,
        files={name: vendor.static_path(name) for name in vendor.FILES},
    )
