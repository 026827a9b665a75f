"""The "Upload a bag" button: self-hosted Uppy files, disabled with the reason when they are missing, the page's CSP."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.config import ConfigError, ServerConfig
from core.server.tus.protocol import HEADER_TUS_RESUMABLE, TUS_COLLECTION_PATH, TUS_VERSION
from dashboard import vendor
from dashboard.access import CSRF_HEADER
from tests.dashboard.conftest import bearer
from tests.dashboard.test_access import csrf_of, sign_in
from tests.helpers.processes import REPO_ROOT

PAGES = ["/dashboard/", "/dashboard/recordings"]


@pytest.fixture(scope="module", autouse=True)
def assets() -> None:
    """The real files, as `make assets` installs them (npm ci on the pinned lock file; a no-op once done)."""
    vendor.install()


@pytest.mark.parametrize("path", PAGES)
def test_signed_in_operators_get_the_button_with_self_hosted_uppy(
    client: FlaskClient, admin_key: str, path: str
) -> None:
    sign_in(client, admin_key)
    page = client.get(path).get_data(as_text=True)
    assert re.search(r'<button type="button" id="upload-bag"[^>]*data-endpoint="/files/"', page)
    assert 'id="upload-bag" class="upload-button" disabled' not in page
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert "/dashboard/static/vendor/uppy.min.js" in scripts
    assert "/dashboard/static/vendor/sha256.min.js" in scripts
    assert "/dashboard/static/upload.js" in scripts
    assert all(src.startswith("/dashboard/static/") for src in scripts)  # no CDN
    assert "<script>" not in page  # the CSP forbids inline scripts


def test_the_vendor_files_are_served_by_the_dashboard(client: FlaskClient) -> None:
    for name in vendor.FILES:
        with client.get(f"/dashboard/static/vendor/{name}") as reply:  # a file reply: closed after reading
            assert reply.status_code == 200
            assert reply.get_data() == (vendor.VENDOR_DIR / name).read_bytes()


def test_missing_uppy_disables_the_button_and_says_why(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vendor, "VENDOR_DIR", tmp_path / "no-vendor")
    with caplog.at_level(logging.WARNING, logger="upload_server.dashboard"):
        app = make_app(auth_enabled=False)
    warning = [r.getMessage() for r in caplog.records if "upload button disabled" in r.getMessage()]
    assert len(warning) == 1
    assert "uppy.min.js" in warning[0]
    assert "make assets" in warning[0]
    client = app.test_client()
    for path in PAGES:
        reply = client.get(path)
        assert reply.status_code == 200  # the page works, only the button does not
        page = reply.get_data(as_text=True)
        assert '<button type="button" id="upload-bag" class="upload-button" disabled' in page
        assert "uploads unavailable: Uppy is not installed on the server" in page
        assert "make assets" in page
        assert "uppy.min.js" not in page


def test_installing_the_files_enables_the_button_without_a_restart(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "vendor"
    monkeypatch.setattr(vendor, "VENDOR_DIR", folder)
    client = make_app(auth_enabled=False).test_client()
    assert "disabled" in client.get("/dashboard/").get_data(as_text=True).split('id="upload-bag"')[1].split(">")[0]
    vendor.install(vendor_dir=folder)
    assert "disabled" not in client.get("/dashboard/").get_data(as_text=True).split('id="upload-bag"')[1].split(">")[0]


def test_robot_keys_never_see_the_button(client: FlaskClient, robot_key: str) -> None:
    reply = client.get("/dashboard/", headers=bearer(robot_key))
    assert reply.status_code == 302  # to the sign-in page: the dashboard is for admins, who may upload


def test_the_page_uploads_as_the_signed_in_operator_only_with_its_csrf_token(
    client: FlaskClient, admin_key: str
) -> None:
    """What upload.js sends: the session cookie (same origin) plus X-CSRF-Token; a cross-site page has no token."""
    sign_in(client, admin_key)
    tus = {HEADER_TUS_RESUMABLE: TUS_VERSION, "Upload-Length": "5", "Upload-Metadata": "filename ZS5tY2Fw"}
    assert client.post(TUS_COLLECTION_PATH, headers=tus).status_code == 401
    assert client.post(TUS_COLLECTION_PATH, headers={**tus, CSRF_HEADER: "forged"}).status_code == 401
    token = csrf_of(client, "/dashboard/")
    created = client.post(TUS_COLLECTION_PATH, headers={**tus, CSRF_HEADER: token})
    assert created.status_code == 201
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    body = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0", HEADER_TUS_RESUMABLE: TUS_VERSION}
    assert client.patch(f"/files/{upload_id}", data=b"hello", headers=body).status_code == 401
    assert client.patch(f"/files/{upload_id}", data=b"hello", headers={**body, CSRF_HEADER: token}).status_code == 204
    status = client.get(f"/upload/{upload_id}").json  # reads need no token: the page polls this
    assert status["state"] in ("finalizing", "complete")  # every byte arrived; finalize may still run
    assert status["owner"] == "operator"


def test_upload_streams_reach_the_page_and_zero_is_refused(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False, dashboard_upload_streams=3).test_client()
    assert 'data-streams="3"' in client.get("/dashboard/").get_data(as_text=True)  # local disk: concatenation
    with pytest.raises(ConfigError, match="DASHBOARD_UPLOAD_STREAMS"):
        ServerConfig.from_env({"DASHBOARD_UPLOAD_STREAMS": "0"})


def test_make_assets_runs_on_the_bare_system_python() -> None:
    """`make assets` must work before (or without) the venv: the installer uses the standard library only."""
    python = "/usr/bin/python3"
    assert subprocess.run([python, "-c", "import flask"], capture_output=True, check=False).returncode != 0
    ran = subprocess.run(
        [python, "-I", "dashboard/vendor.py"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("installed ") == len(vendor.FILES)
    assert vendor.missing() == []
