"""The dashboard's "Upload a bag" (Uppy + @uppy/tus in headless Chromium) vs the native client, in the same run.

    .venv/bin/python -m bench.dashboard_upload [--size 256MiB] [--rounds 3]

A real gunicorn (the shipped ``gunicorn.conf.py``, auth off) on loopback. Each round uploads a fresh
incompressible file (so deduplication cannot short-cut it) and waits until the server says
``verified``:

- ``uppy``: the page's default, one stream with a sha256 ``Upload-Checksum`` on every 8 MiB PATCH;
  ``hash`` is the page's whole-file sha256 pass (js-sha256) before the first byte is sent;
- ``uppy-2-streams``: ``DASHBOARD_UPLOAD_STREAMS=2`` (parallel partial uploads, concatenated);
- ``native``: ``python -m core.network_manager upload`` with the same chunk size: the baseline.

Printed: median seconds and MB/s (MB = 10^6 B), and each as a ratio of the native client's time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, Request, expect

from bench.client_throughput import generate, run_client
from core.config import parse_size
from core.protocol import DEFAULT_CHUNK_SIZE
from dashboard import vendor
from tests.dashboard.browser import chromium
from tests.helpers.servers import GunicornServer

MB = 1_000_000
TIMEOUT_MS = 600_000


@contextmanager
def server(root: Path, streams: int) -> Iterator[GunicornServer]:
    env = {"SWEEP_INTERVAL": "0", "DASHBOARD_UPLOAD_STREAMS": str(streams)}
    with GunicornServer(root / "uploads", workers=4, env=env) as running:
        yield running


def uppy_round(page: Page, url: str, path: Path) -> tuple[float, float]:
    """(seconds to verified, seconds of the page's sha256 pass) for one file picked in the Upload a bag dialog."""
    page.goto(url + "/dashboard/")
    expect(page.locator("#upload-bag")).to_have_attribute("data-ready", "1")
    page.click("#upload-bag")
    page.locator(".uppy-Dashboard-input:not([webkitdirectory])").first.set_input_files(str(path))
    first_post: list[float] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and "/files/" in request.url and not first_post:
            first_post.append(time.perf_counter())

    page.on("request", seen)
    started = time.perf_counter()
    page.locator(".uppy-StatusBar-actionBtn--upload").click()
    expect(page.locator("#upload-status")).to_contain_text("stored and verified", timeout=TIMEOUT_MS)
    seconds = time.perf_counter() - started
    page.remove_listener("request", seen)
    return seconds, first_post[0] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=lambda v: parse_size("--size", v), default=256 * MB)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    vendor.install()
    times: dict[str, list[float]] = {"native": [], "uppy": [], "uppy-2-streams": []}
    hashing: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-upload-") as tmp:
        root = Path(tmp)
        with server(root / "one", 1) as one, server(root / "two", 2) as two, chromium(root / "profile") as browser:
            page = browser.new_page()
            for n in range(args.rounds):
                for name in times:
                    path = root / f"{name}-{n}.mcap"
                    generate(path, args.size)
                    if name == "native":
                        seconds, _, _ = run_client(path, one.upload_url, DEFAULT_CHUNK_SIZE, 1, root / f"state-{n}")
                    else:
                        seconds, hashed = uppy_round(page, (one if name == "uppy" else two).url, path)
                        if name == "uppy":
                            hashing.append(hashed)
                    times[name].append(seconds)
                    path.unlink()
    baseline = statistics.median(times["native"])
    print(f"{args.size / MB:.0f} MB, {args.rounds} rounds, 8 MiB chunks, loopback; median of each:")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"  {name:15} {seconds:7.2f} s  {args.size / MB / seconds:7.1f} MB/s  {seconds / baseline:5.2f}x native")
    print(f"  page sha256 pass before the first byte: {statistics.median(hashing):.2f} s "
          f"({args.size / MB / statistics.median(hashing):.0f} MB/s)")  # fmt: skip


if __name__ == "__main__":
    main()
