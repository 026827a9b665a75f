"""The Recordings view in headless Chromium against a real gunicorn fed by the simulated robot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.dashboard.browser import PHONE, chromium, screenshot
from tests.helpers.processes import PYTHON, ManagedProcess, wait_until
from tests.helpers.servers import GunicornServer

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "uploads", workers=2, auth=True, env={"SWEEP_INTERVAL": "0"}) as running:
        yield running


def simulated_robot(server: GunicornServer, output: Path, log: Path) -> ManagedProcess:
    """A robot recording a few seconds in short splits and uploading each one as it closes."""
    argv = [
        PYTHON, "-m", "ros_nodes.simulate",
        "--upload-url", server.url + "/upload", "--heartbeat-url", server.url, "--heartbeat", "1",
        "--robot-id", "robot-1", "--output", str(output), "--duration", "5", "--max-bag-duration", "2",
        "--image-rate", "2", "--wait-uploads", "60",
    ]  # fmt: skip
    return ManagedProcess(argv, log_path=log, env={"UPLOAD_API_KEY": server.robot_key})


def catalogued(server: GunicornServer) -> int:
    reply = requests.get(f"{server.url}/bags", headers=server.headers(server.admin_key), timeout=5)
    reply.raise_for_status()
    return int(reply.json()["total"])


def sign_in(page: Page, server: GunicornServer) -> None:
    page.goto(server.url + "/dashboard/recordings")
    expect(page).to_have_url(server.url + "/dashboard/login")
    page.fill("#key", server.admin_key)
    page.click("button[type=submit]")
    page.goto(server.url + "/dashboard/recordings")
    expect(page.locator("#rec-app")).to_be_visible()


def test_operator_finds_a_recording_opens_it_and_downloads_it(server: GunicornServer, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        sign_in(page, server)
        expect(page.locator("#bag-empty")).to_be_visible()
        with simulated_robot(server, tmp_path / "robot", tmp_path / "robot.log") as robot:
            # Live: the first bag shows up without a reload once its last file is verified.
            expect(page.locator("#bag-rows tr").first).to_be_visible(timeout=60_000)
            wait_until(lambda: not robot.alive(), timeout=120, what="the robot to finish its uploads")
        total = catalogued(server)
        assert total >= 2
        expect(page.locator("#bag-rows tr")).to_have_count(total, timeout=15_000)

        first = page.locator("#bag-rows tr").first
        cell = first.locator("td.name")
        name = cell.get_attribute("title") or ""
        assert name
        assert cell.inner_text().startswith(name)
        assert cell.evaluate("td => td.scrollWidth <= td.clientWidth")  # the full name shows, split number included
        first.click()
        detail = page.locator("#bag-detail")
        expect(detail).to_be_visible()
        expect(page.locator("#d-name")).to_have_text(name)
        expect(page.locator("#d-topics tr", has_text="/imu/data")).to_contain_text("sensor_msgs/msg/Imu")
        expect(page.locator("#d-files li")).to_have_count(2)
        expect(page.locator("#d-files")).to_contain_text("metadata.yaml")
        foxglove = page.locator("#d-foxglove")
        expect(foxglove).to_be_visible()
        href = foxglove.get_attribute("href") or ""
        signed = parse_qs(urlsplit(href).query)["ds.url"][0]
        assert href.startswith("https://app.foxglove.dev/~/view?ds=remote-file&")
        assert server.admin_key not in href
        # The link works with no key and no cookie, as Foxglove fetches it.
        assert requests.get(signed, headers={"Range": "bytes=0-7"}, timeout=5).content == b"\x89MCAP0\r\n"
        screenshot(page, "recordings-detail")

        with page.expect_download() as download_info:
            page.click("#d-download")
        assert download_info.value.suggested_filename == f"{name}.tar"

        page.fill("#r-topic", "/camera")
        page.check("#r-prefix")
        expect(page.locator("#bag-rows tr")).to_have_count(total)
        page.fill("#r-topic", "/nothing")
        expect(page.locator("#bag-empty")).to_be_visible()
        page.fill("#r-topic", "")
        expect(page.locator("#bag-rows tr")).to_have_count(total)

        page.locator("#bag-rows tr").first.click()
        expect(page.locator("#d-name")).to_have_text(name)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#d-delete")
        expect(page.locator("#bag-rows tr")).to_have_count(total - 1)
        assert catalogued(server) == total - 1


def test_recordings_at_phone_width_have_no_sideways_scrolling(server: GunicornServer, tmp_path: Path) -> None:
    with simulated_robot(server, tmp_path / "robot", tmp_path / "robot.log") as robot:
        wait_until(lambda: not robot.alive(), timeout=120, what="the robot to finish its uploads")
    with chromium(tmp_path / "profile", PHONE) as browser:
        page = browser.new_page()
        sign_in(page, server)
        expect(page.locator("#bag-rows tr").first).to_be_visible(timeout=15_000)
        page.locator("#bag-rows tr").first.click()
        expect(page.locator("#bag-detail")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(page, "phone-recordings")
