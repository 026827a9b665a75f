"""The dashboard in headless Chromium against a real gunicorn and a simulated robot."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Locator, Page, expect

from core.protocol import HEADER_CHUNK_SHA256
from tests.dashboard.browser import LAPTOP, PHONE, chromium, screenshot
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.processes import PYTHON, ManagedProcess
from tests.helpers.servers import GunicornServer

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

SERVER_ENV = {
    "ROBOT_OFFLINE_AFTER": "6",
    "HEARTBEAT_INTERVAL": "1",
    "DASHBOARD_SSE_MAX_SECONDS": "20",
    "SWEEP_INTERVAL": "0",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path / "uploads", workers=2, auth=True, env=SERVER_ENV) as running:
        yield running


NO_VALUE = "\u2013"  # the page's en dash for "no value"
BYTES = re.compile(r"^\d+(\.\d)? (B|KiB|MiB|GiB)$")


def sign_in(page: Page, server: GunicornServer) -> None:
    page.goto(server.url + "/dashboard/")
    expect(page).to_have_url(server.url + "/dashboard/login")
    page.fill("#key", server.admin_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(server.url + "/dashboard/")
    expect(page.locator("#conn")).to_have_text("live", timeout=15_000)


def progress_of(row: Locator) -> float:
    return float(row.locator(".bar").get_attribute("aria-valuenow") or 0)


def simulated_robot(server: GunicornServer, proxy: FaultProxy, output: Path, log: Path) -> ManagedProcess:
    """A robot whose uploads take the faulty path while its heartbeats reach the server directly."""
    argv = [
        PYTHON, "-m", "ros_nodes.simulate",
        "--upload-url", proxy.url + "/upload", "--heartbeat-url", server.url, "--heartbeat", "1",
        "--stalled-timeout", "3", "--robot-id", "robot-1", "--output", str(output),
        "--duration", "600", "--max-bag-duration", "3", "--image-rate", "10",
    ]  # fmt: skip
    return ManagedProcess(argv, log_path=log, env={"UPLOAD_API_KEY": server.robot_key})


def upload_row(page: Page, key: str) -> Locator:
    return page.locator(f'#up-rows tr[data-key="{key}"]')


def job_row(page: Page, state: str) -> tuple[str, Locator]:
    """The first robot job shown in ``state``, and a locator that follows that job to its end.

    Followed by ``data-job``: the row's key changes from the job to the upload id when the server
    assigns one, which a job caught while initializing does a moment later.
    """
    first = page.locator(f'#up-rows tr[data-state="{state}"][data-job^="robot-1:"]').first
    expect(first).to_be_visible(timeout=60_000)
    job = first.get_attribute("data-job") or ""
    return job, page.locator(f'#up-rows tr[data-job="{job}"]')


@pytest.mark.slow
def test_operator_watches_upload_stall_and_pauses_the_recorder(server: GunicornServer, tmp_path: Path) -> None:
    with FaultProxy(server.port) as proxy:
        proxy.throttle = 1_500_000  # bytes/s: slow enough to watch a progress bar move
        robot = simulated_robot(server, proxy, tmp_path / "robot", tmp_path / "robot.log")
        with robot, chromium(tmp_path / "profile") as browser:
            page = browser.new_page()
            sign_in(page, server)
            fleet_row = page.locator('#fleet-rows tr[data-key="robot-1"]')
            card = page.locator('#rec-cards article[data-key="robot-1"]')
            expect(fleet_row).to_contain_text("recording", timeout=30_000)
            # Elapsed time and the open bag's size on disk come from Recorder.status() via the heartbeat.
            expect(card.locator(".meta")).to_have_text(re.compile(r"· \d+ (s|min \d+ s) elapsed"), timeout=15_000)
            expect(fleet_row.locator('td[data-label="Bag size"]')).to_have_text(BYTES, timeout=15_000)

            # An upload's progress bar advances, and the upload completes.
            job, uploading = job_row(page, "uploading")
            first = progress_of(uploading)
            page.wait_for_function(
                '([job, first]) => { const r = document.querySelector(`#up-rows tr[data-job="${job}"]`);'
                " return r && (r.dataset.state === 'complete' ||"
                " Number(r.querySelector('.bar').getAttribute('aria-valuenow')) > first); }",
                arg=[job, first],
                timeout=60_000,
            )
            expect(uploading).to_have_attribute("data-state", "complete", timeout=90_000)
            expect(uploading.locator("a")).to_have_text("download")
            screenshot(page, "laptop-uploading")

            # The upload path is black-holed mid-upload (heartbeats still get through): the client's own
            # status, reported by heartbeat, shows that upload stalled with the reason, the robot online.
            expect(page.locator('#up-rows tr[data-state="uploading"]').first).to_be_visible(timeout=60_000)
            proxy.pause()
            # Whichever upload was in flight (a small one may finish just before the pause; the next split's
            # then stalls at its first chunk).
            _, stalled = job_row(page, "stalled")
            expect(stalled.locator(".reason")).to_contain_text(re.compile(r"\w"))
            assert "robot offline" not in (stalled.locator(".reason").text_content() or "")
            expect(fleet_row.locator('td[data-label="Status"] .state')).to_have_text("online")
            screenshot(page, "laptop-stalled")
            page.set_viewport_size(PHONE)
            screenshot(page, "phone-stalled")
            page.set_viewport_size(LAPTOP)

            # The path comes back: the same upload resumes and completes.
            proxy.resume()
            expect(stalled).to_have_attribute("data-state", "complete", timeout=90_000)

            # The operator pauses the recording through the server's command queue.
            pause = card.locator('button[data-action="pause"]')
            expect(pause).to_be_enabled(timeout=30_000)
            pause.click()
            expect(card.locator("header .state")).to_have_text("paused", timeout=30_000)
            expect(card.locator(".cmd")).to_contain_text("pause — done", timeout=30_000)
            status = requests.get(
                server.url + "/dashboard/api/state", headers=server.headers(server.admin_key), timeout=5
            ).json()
            assert status["fleet"][0]["recording_state"] == "paused"
            screenshot(page, "laptop-paused")
            page.set_viewport_size(PHONE)
            screenshot(page, "phone-paused")


HOSTILE = '<img src=x onerror="window.__xss=1">'
HOSTILE_SCRIPT = "<script>window.__xss=1</script>"


def test_hostile_robot_data_is_shown_as_text_and_never_runs(server: GunicornServer, tmp_path: Path) -> None:
    hostile_id = HOSTILE.replace("/", "")
    heartbeat = {
        "recorder": {
            "state": HOSTILE_SCRIPT,
            "current_bag": HOSTILE,
            "topics": {HOSTILE_SCRIPT: {"type": HOSTILE, "messages": 1, "rate_hz": 1.0}},
            "last_error": HOSTILE_SCRIPT,
        },
        "uploads": [
            {
                "job_id": HOSTILE,
                "path": f"/x/{HOSTILE}",
                "state": "uploading",
                "size": 10,
                "bytes_sent": 5,
                "error": HOSTILE_SCRIPT,
                "upload_id": None,
            },
        ],
    }
    reply = requests.post(
        f"{server.url}/robots/{quote(hostile_id, safe='')}/heartbeat",
        data=json.dumps(heartbeat),
        headers=server.headers(server.admin_key, **{"Content-Type": "application/json"}),
        timeout=5,
    )
    assert reply.status_code == 200, reply.text
    with chromium(tmp_path / "profile", LAPTOP) as browser:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        sign_in(page, server)
        fleet_row = page.locator("#fleet-rows tr").first
        expect(fleet_row).to_contain_text(hostile_id)
        expect(fleet_row).to_contain_text(HOSTILE_SCRIPT)
        expect(page.locator("#up-rows tr").first).to_contain_text(HOSTILE_SCRIPT)
        expect(page.locator("#rec-cards article").first).to_contain_text(HOSTILE_SCRIPT)
        assert page.evaluate("window.__xss") is None
        assert page.locator("#app img, #app script").count() == 0
        assert dialogs == []
        screenshot(page, "laptop-hostile")


def test_phone_width_has_no_sideways_scrolling(server: GunicornServer, tmp_path: Path) -> None:
    for robot in range(3):
        requests.post(
            f"{server.url}/robots/robot-{robot}/heartbeat",
            json={"recorder": {"state": "recording", "current_bag": "session_0001"}, "uploads": []},
            headers=server.headers(server.admin_key),
            timeout=5,
        ).raise_for_status()
    with chromium(tmp_path / "profile", PHONE) as browser:
        page = browser.new_page()
        sign_in(page, server)
        expect(page.locator("#fleet-rows tr")).to_have_count(3)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        screenshot(page, "phone-fleet")


def test_polling_takes_over_when_the_event_stream_is_blocked(server: GunicornServer, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.route("**/dashboard/events*", lambda route: route.abort())
        page.goto(server.url + "/dashboard/login")
        page.fill("#key", server.admin_key)
        page.click("button[type=submit]")
        expect(page.locator("#conn")).to_have_text("polling", timeout=15_000)
        requests.post(
            f"{server.url}/robots/late-robot/heartbeat", json={}, headers=server.headers(server.admin_key), timeout=5
        ).raise_for_status()
        expect(page.locator('#fleet-rows tr[data-key="late-robot"]')).to_be_visible(timeout=15_000)


def upload_file(server: GunicornServer, name: str, data: bytes, metadata: dict[str, object]) -> str:
    """One complete upload through the real API with the robot's key; its upload id."""
    headers = server.headers(server.robot_key)
    init = requests.post(
        f"{server.url}/upload/init",
        json={
            "filename": name,
            "filesize": len(data),
            "chunks": 1,
            "sha256": hashlib.sha256(data).hexdigest(),
            "metadata": metadata,
        },
        headers=headers,
        timeout=10,
    )
    init.raise_for_status()
    upload_id = str(init.json()["upload_id"])
    put_headers = {**headers, HEADER_CHUNK_SHA256: hashlib.sha256(data).hexdigest()}
    chunk_url = f"{server.url}/upload/{upload_id}/chunk/0"
    requests.put(chunk_url, data=data, headers=put_headers, timeout=10).raise_for_status()
    requests.post(f"{server.url}/upload/{upload_id}/finalize", headers=headers, timeout=10).raise_for_status()
    return upload_id


def test_uploads_table_groups_a_bags_files_with_full_names_times_and_waits(
    server: GunicornServer, tmp_path: Path
) -> None:
    bag = "robot-1_20261201T080000Z-ab12_0012"  # the split number ends the name: it must stay visible
    bag_meta = {"bag": bag, "split_index": 12, "session": "20261201T080000Z-ab12", "source_robot": "robot-1"}
    storage_id = upload_file(server, f"{bag}_0.mcap", b"m" * 5000, {**bag_meta, "part": "storage"})
    upload_file(server, "metadata.yaml", b"rosbag2_bagfile_information: {}\n", {**bag_meta, "part": "metadata"})
    retry_at = time.time() + 600
    waiting = {
        "job_id": "job-429",
        "path": "/bags/robot-1_20261201T080000Z-ab12_0013/robot-1_20261201T080000Z-ab12_0013_0.mcap",
        "state": "queued",
        "size": 4000,
        "bytes_sent": 0,
        "blocked_reason": "rate_limited",
        "retry_at": retry_at,
        "metadata": {**bag_meta, "bag": "robot-1_20261201T080000Z-ab12_0013", "split_index": 13, "part": "storage"},
    }
    beat = requests.post(
        f"{server.url}/robots/robot-1/heartbeat",
        json={"recorder": {"state": "recording"}, "uploads": [waiting]},
        headers=server.headers(server.robot_key),
        timeout=5,
    )
    beat.raise_for_status()
    too_large = requests.post(
        f"{server.url}/robots/robot-1/heartbeat",
        data=b"x" * 70_000,
        headers=server.headers(server.robot_key, **{"Content-Type": "application/json"}),
        timeout=5,
    )
    assert too_large.status_code == 413

    with chromium(tmp_path / "profile", LAPTOP) as browser:
        page = browser.new_page()
        sign_in(page, server)
        head = upload_row(page, storage_id)
        expect(head).to_have_attribute("data-state", "complete", timeout=30_000)
        expect(head.locator("td.file .bag")).to_have_text(f"{bag} (split 12)")
        expect(head.locator("td.file .name")).to_have_text(f"{bag}_0.mcap")
        # Shown whole: nothing of the name is cut off by the column.
        assert head.locator("td.file").evaluate("td => td.scrollWidth <= td.clientWidth")
        assert head.locator("td.file .bag").evaluate("n => n.scrollWidth <= n.clientWidth + 1")
        # metadata.yaml sits right under its bag's storage file.
        member = page.locator(f"#up-rows tr[data-key='{storage_id}'] + tr")
        expect(member).to_have_attribute("data-group", bag)
        expect(member).to_have_class(re.compile(r"\bgrouped\b"))
        expect(member.locator("td.file .name")).to_have_text("└ metadata.yaml")
        expect(member).to_have_attribute("data-state", "complete", timeout=30_000)
        hhmmss = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d$")
        for row in (head, member):
            expect(row.locator('td[data-label="Started"]')).to_have_text(hhmmss)
            expect(row.locator('td[data-label="Finished"]')).to_have_text(hhmmss)
        # The robot waits out a 429: the table and the fleet say so, with the retry time.
        blocked = upload_row(page, "robot-1:job-429")
        expect(blocked.locator(".reason")).to_contain_text(re.compile(r"rate_limited, retry in (9|10) min"))
        expect(blocked.locator('td[data-label="Finished"]')).to_have_text(NO_VALUE)
        # Its next heartbeat was refused: the fleet row says why instead of going quietly stale.
        fleet_row = page.locator('#fleet-rows tr[data-key="robot-1"]')
        expect(fleet_row.locator('td[data-label="Last error"]')).to_contain_text(
            "heartbeat rejected: payload_too_large"
        )
        expect(fleet_row.locator('td[data-label="Status"] .state')).to_have_text("rejected", timeout=20_000)
        screenshot(page, "laptop-uploads-grouped")


def test_viewers_over_the_stream_cap_poll_and_still_see_changes(tmp_path: Path) -> None:
    """One gunicorn worker allowing one stream: the first tab streams, the second polls the shared snapshot."""
    env = {**SERVER_ENV, "DASHBOARD_SSE_MAX_STREAMS": "1", "DASHBOARD_SSE_MAX_SECONDS": "120"}
    with (
        GunicornServer(tmp_path / "uploads", workers=1, auth=True, env=env) as capped,
        chromium(tmp_path / "profile") as browser,
    ):
        first, second = browser.new_page(), browser.new_page()
        sign_in(first, capped)
        second.goto(capped.url + "/dashboard/")
        expect(second.locator("#conn")).to_have_text("polling", timeout=15_000)
        expect(first.locator("#conn")).to_have_text("live")

        requests.post(
            f"{capped.url}/robots/polled-robot/heartbeat", json={}, headers=capped.headers(capped.admin_key), timeout=5
        ).raise_for_status()

        expect(second.locator('#fleet-rows tr[data-key="polled-robot"]')).to_be_visible(timeout=15_000)
        expect(first.locator('#fleet-rows tr[data-key="polled-robot"]')).to_be_visible(timeout=15_000)
        expect(second.locator("#conn")).to_have_text("polling")
