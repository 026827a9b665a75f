"""The Recordings view: the bag catalogue for signed-in operators (list, detail, whole-bag download, delete).

The routes hang on the dashboard's blueprint, so they share its sign-in (a session
cookie or an admin key header) and its CSRF rule for the one state change, delete.
The JSON is the API's own (``core.server.bags_api``), so the page and ``GET /bags`` agree.
"""

from __future__ import annotations

import time

from flask import Response, jsonify, redirect, url_for

from core.server import bags_api, signed_links
from core.server.errors import Forbidden
from dashboard import access, upload_button
from dashboard.views import _config, _page, _require_viewer, bp

# How often the page asks for the list again: a bag appears once its last file is verified.
REFRESH_SECONDS = 3


@bp.get("/recordings")
def recordings() -> Response:
    identity = access.viewer()
    if identity is None:
        return redirect(url_for("dashboard.login"))  # type: ignore[return-value]
    return _page(
        "dashboard/recordings.html",
        identity=identity,
        csrf_token=access.csrf_token(),
        refresh=REFRESH_SECONDS,
        upload=upload_button.button(_config()),
    )


@bp.get("/api/bags")
def api_bags() -> Response:
    return jsonify(bags_api.bag_page(_require_viewer()))


@bp.get("/api/bags/<bag_id>")
def api_bag(bag_id: str) -> Response:
    bag = bags_api.bag_service().get(_require_viewer(), bag_id)
    return jsonify({"success": True, **bags_api.describe(bag, detailed=True)})


@bp.get("/api/bags/<bag_id>/download")
def api_bag_download(bag_id: str) -> Response:
    return bags_api.tar_response(_require_viewer(), bag_id)


@bp.post("/api/bags/<bag_id>/delete")
def api_bag_delete(bag_id: str) -> Response:
    identity = _require_viewer()
    _require_csrf()
    bag = bags_api.bag_service().delete(identity, bag_id)
    return jsonify({"success": True, "deleted": bags_api.describe(bag, detailed=True)})


@bp.post("/api/bags/<bag_id>/links")
def api_bag_links(bag_id: str) -> Response:
    """Signed links (and Open in Foxglove) for the detail panel; POST with the CSRF token: it mints a credential."""
    identity = _require_viewer()
    _require_csrf()
    return jsonify(signed_links.bag_links(identity, bag_id, time.time()))


def _require_csrf() -> None:
    if not access.csrf_exempt() and not access.csrf_ok():
        msg = f"missing or wrong CSRF token (send the page's token in {access.CSRF_HEADER})"
        raise Forbidden(msg)
