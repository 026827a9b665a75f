""" "Upload a bag" in headless Chromium: Uppy with @uppy/tus against the real gunicorn's tus endpoint under /files/.

The page is the operator's, signed in with the session cookie; faults are made with
Playwright's route interception (a connection cut, a body damaged on the way), by
crashing the server, or by reloading the page mid-upload, and every test ends with the server's copy checked
against the file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, Request, Route, expect

from core.server.tus.protocol import (
    HEADER_TUS_RESUMABLE,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_UPLOAD_CONCAT,
    HEADER_UPLOAD_OFFSET,
    TUS_VERSION,
)
from dashboard import vendor
from tests.dashboard.browser import chromium, screenshot
from tests.helpers.bags import STRING, write_bag
from tests.helpers.nginx import NginxServer
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import make_tls_files

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

# Small PATCHes, so a 1 MiB file takes several requests and can be cut between them.
CHUNK = 256 * 1024
UPLOAD_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module", autouse=True)
def assets() -> None:
    """Uppy as `make assets` installs it (npm ci on the pinned lock file; a no-op once done)."""
    vendor.install()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra settings of the test's server (a test parametrizes it)."""
    return {}


@pytest.fixture
def server(tmp_path: Path, server_env: dict[str, str]) -> Iterator[GunicornServer]:
    # TRUSTED_PROXIES: behind nginx the session cookie is Secure (X-Forwarded-Proto), as deployed.
    env = {"SWEEP_INTERVAL": "0", "DEFAULT_CHUNK_SIZE": str(CHUNK), "TRUSTED_PROXIES": "127.0.0.1", **server_env}
    with GunicornServer(tmp_path / "uploads", workers=2, auth=True, env=env) as running:
        yield running


@pytest.fixture(params=["gunicorn"])
def site(request: pytest.FixtureRequest, server: GunicornServer, tmp_path: Path) -> Iterator[str]:
    """The URL the browser opens: gunicorn itself, or the shipped nginx site (TLS) in front of it."""
    if request.param == "gunicorn":
        yield server.url
        return
    tls = make_tls_files(tmp_path / "tls")
    with NginxServer(tmp_path / "nginx", upstream_ports=[server.port], cert=tls.cert, key=tls.key) as nginx:
        yield nginx.url


BOTH_SITES = pytest.mark.parametrize(
    "site", ["gunicorn", pytest.param("nginx", marks=pytest.mark.nginx)], indirect=True
)


@pytest.fixture
def page(site: str, server: GunicornServer, tmp_path: Path) -> Iterator[Page]:
    with chromium(tmp_path / "profile", ignore_https_errors=site.startswith("https:")) as browser:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(site + "/dashboard/")
        page.fill("#key", server.admin_key)
        page.click("button[type=submit]")
        expect(page.locator("#upload-bag")).to_have_attribute("data-ready", "1")
        yield page
        # Uppy runs under the dashboard's CSP as it is (script-src 'self', no inline styles or scripts).
        assert not [text for text in console if "Content Security Policy" in text]


def open_uploader(page: Page) -> None:
    page.click("#upload-bag")
    expect(page.locator(".uppy-Dashboard-inner")).to_be_visible()


def upload(page: Page, path: Path) -> None:
    """Pick ``path`` (a file, or a folder through the folder picker) and press Uppy's upload button."""
    picker = (
        ".uppy-Dashboard-input[webkitdirectory]" if path.is_dir() else ".uppy-Dashboard-input:not([webkitdirectory])"
    )
    page.locator(picker).first.set_input_files(str(path))
    page.locator(".uppy-StatusBar-actionBtn--upload").click()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def server_uploads(server: GunicornServer) -> list[dict[str, Any]]:
    reply = requests.get(f"{server.url}/uploads", headers=server.headers(server.admin_key), timeout=5)
    reply.raise_for_status()
    uploads: list[dict[str, Any]] = reply.json()["uploads"]
    return uploads


def tus_offset(server: GunicornServer, upload_id: str) -> int:
    headers = server.headers(server.admin_key, **{HEADER_TUS_RESUMABLE: TUS_VERSION})
    reply = requests.head(f"{server.url}/files/{upload_id}", headers=headers, timeout=5)
    reply.raise_for_status()
    return int(reply.headers[HEADER_UPLOAD_OFFSET])


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


class TusLog:
    """The tus requests the page sends: (method, upload id or '', Upload-Offset or None); PATCH checksums; concats."""

    def __init__(self, page: Page) -> None:
        self.requests: list[tuple[str, str, int | None]] = []
        self.checksums: list[str | None] = []
        self.concats: list[str] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if "/files/" not in request.url:
            return
        offset = request.headers.get(HEADER_UPLOAD_OFFSET.lower())
        upload_id = request.url.split("/files/", 1)[1]
        self.requests.append((request.method, upload_id, None if offset is None else int(offset)))
        if request.method == "PATCH":
            self.checksums.append(request.headers.get(HEADER_UPLOAD_CHECKSUM.lower()))
        concat = request.headers.get(HEADER_UPLOAD_CONCAT.lower())
        if request.method == "POST" and concat:
            self.concats.append(concat.split(";")[0])

    def since(self, mark: int) -> list[tuple[str, str, int | None]]:
        return self.requests[mark:]


@BOTH_SITES
def test_operator_uploads_a_bag_folder_and_finds_it_in_recordings(
    page: Page, site: str, server: GunicornServer, tmp_path: Path
) -> None:
    bag = write_bag(tmp_path / "bag-from-laptop", {"/chatter": (STRING, 4000)}, start_ns=1_764_000_000_000_000_000)
    files = sorted(p for p in bag.iterdir())
    assert [f.name for f in files] == ["bag-from-laptop.mcap", "metadata.yaml"]
    open_uploader(page)
    upload(page, bag)
    status = page.locator("#upload-status")
    for f in files:
        expect(status).to_contain_text(f"{f.name}: stored and verified (sha256)", timeout=UPLOAD_TIMEOUT_MS)
    expect(status).to_have_attribute("data-state", "complete")
    screenshot(page, f"upload-a-bag-{'nginx' if site.startswith('https:') else 'gunicorn'}")

    # The server's records: the operator's own uploads, verified against the browser's sha256.
    stored = {u["filename"]: u for u in server_uploads(server)}
    for f in files:
        record = stored[f.name]
        assert record["state"] == "complete"
        assert record["verified"] is True
        assert record["sha256"] == sha256_of(f)
        assert record["metadata"]["bag"] == "bag-from-laptop"

    # The Uploads table shows them (live), and the Recordings view lists the bag with what the server read.
    page.keyboard.press("Escape")
    expect(page.locator("#up-rows tr", has_text="bag-from-laptop.mcap")).to_contain_text("complete")
    page.goto(site + "/dashboard/recordings")
    row = page.locator("#bag-rows tr", has_text="bag-from-laptop")
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text("4000")
    expect(row).to_contain_text("admin")  # the robot column: an operator's upload is filed under the operator


def test_an_upload_cut_by_a_page_reload_resumes_from_the_servers_offset(
    page: Page, server: GunicornServer, tmp_path: Path
) -> None:
    path = random_file(tmp_path / "interrupted.mcap", 4 * CHUNK + 1000)
    log = TusLog(page)

    def cut_after_two_chunks(route: Route) -> None:
        offset = route.request.headers.get(HEADER_UPLOAD_OFFSET.lower())
        if route.request.method == "PATCH" and offset is not None and int(offset) >= 2 * CHUNK:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/files/**", cut_after_two_chunks)
    open_uploader(page)
    with page.expect_event("requestfailed", timeout=UPLOAD_TIMEOUT_MS):
        upload(page, path)
    (record,) = server_uploads(server)
    assert tus_offset(server, record["upload_id"]) == 2 * CHUNK

    # The tab goes away mid-upload (the link still cut, so no retry slips through); Uppy kept the
    # upload's URL in localStorage.
    page.reload()
    page.unroute_all()
    expect(page.locator("#upload-bag")).to_have_attribute("data-ready", "1")
    mark = len(log.requests)
    open_uploader(page)
    upload(page, path)
    expect(page.locator("#upload-status")).to_contain_text("stored and verified", timeout=UPLOAD_TIMEOUT_MS)

    after = log.since(mark)
    assert not [r for r in after if r[0] == "POST"], "a new upload was created instead of resuming"
    assert after[0] == ("HEAD", record["upload_id"], None)
    patches = [r for r in after if r[0] == "PATCH"]
    assert patches[0] == ("PATCH", record["upload_id"], 2 * CHUNK)
    (done,) = server_uploads(server)
    assert done["upload_id"] == record["upload_id"]
    assert done["verified"] is True
    assert done["sha256"] == sha256_of(path)


def test_an_upload_cut_by_a_server_crash_resumes_from_the_servers_offset_on_retry(
    page: Page, server: GunicornServer, tmp_path: Path
) -> None:
    path = random_file(tmp_path / "crashed.mcap", 4 * CHUNK + 1000)
    log = TusLog(page)

    def crash_before_the_third_chunk(route: Route) -> None:
        offset = route.request.headers.get(HEADER_UPLOAD_OFFSET.lower())
        if route.request.method == "PATCH" and offset == str(2 * CHUNK) and server.process and server.process.alive():
            server.crash()  # every gunicorn process SIGKILLed, like a power cut; the PATCH then meets a closed port
        route.continue_()

    page.route("**/files/**", crash_before_the_third_chunk)
    open_uploader(page)
    upload(page, path)
    status = page.locator("#upload-status")
    # Uppy retries (0, 1, 3, 5 s), then gives up and says so; nothing is lost meanwhile.
    expect(status).to_have_attribute("data-state", "failed", timeout=UPLOAD_TIMEOUT_MS)
    page.unroute_all()
    server.start()
    (record,) = server_uploads(server)
    assert tus_offset(server, record["upload_id"]) == 2 * CHUNK

    mark = len(log.requests)
    page.locator(".uppy-StatusBar-actionBtn--retry").click()
    expect(status).to_contain_text("stored and verified", timeout=UPLOAD_TIMEOUT_MS)
    after = log.since(mark)
    assert not [r for r in after if r[0] == "POST"]
    patches = [r for r in after if r[0] == "PATCH"]
    assert patches[0] == ("PATCH", record["upload_id"], 2 * CHUNK)
    (done,) = server_uploads(server)
    assert done["verified"] is True
    assert done["sha256"] == sha256_of(path)


@BOTH_SITES
def test_a_chunk_damaged_on_the_way_is_refused_with_460_and_the_retry_resumes(
    page: Page, server: GunicornServer, tmp_path: Path
) -> None:
    path = random_file(tmp_path / "damaged.mcap", 3 * CHUNK + 1000)
    log = TusLog(page)
    damaged: list[int] = []

    def damage_the_second_chunk_once(route: Route) -> None:
        offset = route.request.headers.get(HEADER_UPLOAD_OFFSET.lower())
        if route.request.method == "PATCH" and offset == str(CHUNK) and not damaged:
            body = bytearray(path.read_bytes()[CHUNK : 2 * CHUNK])
            body[100] ^= 0xFF  # one flipped byte; Upload-Checksum still names the original
            damaged.append(CHUNK)
            route.continue_(post_data=bytes(body))
        else:
            route.continue_()

    page.route("**/files/**", damage_the_second_chunk_once)
    open_uploader(page)
    upload(page, path)
    status = page.locator("#upload-status")
    expect(status).to_have_attribute("data-state", "failed", timeout=UPLOAD_TIMEOUT_MS)
    expect(status).to_contain_text("460")
    assert damaged == [CHUNK]
    (record,) = server_uploads(server)
    assert tus_offset(server, record["upload_id"]) == CHUNK  # nothing of the damaged body was stored

    mark = len(log.requests)
    page.locator(".uppy-StatusBar-actionBtn--retry").click()
    expect(status).to_contain_text("stored and verified", timeout=UPLOAD_TIMEOUT_MS)
    patches = [r for r in log.since(mark) if r[0] == "PATCH"]
    assert patches[0] == ("PATCH", record["upload_id"], CHUNK)
    (done,) = server_uploads(server)
    assert done["verified"] is True
    assert done["sha256"] == sha256_of(path)
    # Every PATCH named the sha256 of its body (a prefix check: the value is base64 of the digest).
    assert log.checksums
    assert all(c is not None and c.startswith("sha256 ") and len(c) == len("sha256 ") + 44 for c in log.checksums)


@pytest.mark.parametrize("server_env", [{"DASHBOARD_UPLOAD_STREAMS": "2"}])
def test_parallel_streams_send_partial_uploads_the_server_joins(
    page: Page, server: GunicornServer, tmp_path: Path
) -> None:
    path = random_file(tmp_path / "parallel.mcap", 6 * CHUNK + 1000)
    log = TusLog(page)
    expect(page.locator("#upload-bag")).to_have_attribute("data-streams", "2")
    open_uploader(page)
    upload(page, path)
    expect(page.locator("#upload-status")).to_contain_text("stored and verified", timeout=UPLOAD_TIMEOUT_MS)
    # tus-js-client's parallelUploads through @uppy/tus: two partial uploads in flight, then one final.
    assert sorted(log.concats) == ["final", "partial", "partial"]
    patched = {upload_id for method, upload_id, _ in log.requests if method == "PATCH"}
    assert len(patched) == 2
    (joined,) = [u for u in server_uploads(server) if u["filename"] == path.name]
    assert joined["verified"] is True
    assert joined["sha256"] == sha256_of(path)


def test_an_ended_sign_in_says_so_instead_of_uploading(page: Page, server: GunicornServer, tmp_path: Path) -> None:
    path = random_file(tmp_path / "signed-out.mcap", CHUNK)
    open_uploader(page)
    page.context.clear_cookies()  # the session is gone (expired, signed out elsewhere, key revoked)
    upload(page, path)
    status = page.locator("#upload-status")
    expect(status).to_have_attribute("data-state", "failed", timeout=UPLOAD_TIMEOUT_MS)
    expect(status).to_contain_text("not signed in any more")
    assert server_uploads(server) == []
