"""The "Upload a bag" button: what the page needs to drive Uppy against the server's tus endpoint.

Every signed-in dashboard viewer is an admin (``dashboard.access``), and an admin
may upload, so the button shows for everyone who sees the page. It is disabled,
with the reason on the page, when the Uppy files are not installed
(``dashboard.vendor``): the dashboard itself never breaks for a missing asset.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import ServerConfig
from core.protocol import UPLOAD_PREFIX
from core.server.tus.protocol import TUS_COLLECTION_PATH
from dashboard import vendor


@dataclass(frozen=True)
class UploadButton:
    ready: bool
    endpoint: str
    chunk_size: int
    max_file_size: int
    status_url: str
    hint: str
    files: dict[str, str]


def button(config: ServerConfig) -> UploadButton:
    """The template's view of the button; ``ready`` is checked per page view, so `make assets` needs no restart."""
    return UploadButton(
        ready=not vendor.missing(),
        endpoint=TUS_COLLECTION_PATH,  # tus 1.0 (core/server/tus), same origin as the page
        # One PATCH per chunk: the server's advertised chunk size, well under every body limit (MAX_CHUNK_SIZE, nginx).
        chunk_size=config.default_chunk_size,
        max_file_size=config.max_file_size,
        status_url=UPLOAD_PREFIX + "/",
        hint=vendor.INSTALL_HINT,
        files={name: vendor.static_path(name) for name in vendor.FILES},
    )
