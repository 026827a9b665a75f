"""Headless Debian Chromium through Playwright's sync API, with screenshots under test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

from tests.helpers.processes import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "dashboard"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@contextmanager
def chromium(
    user_data_dir: Path, viewport: dict[str, int] = LAPTOP, *, ignore_https_errors: bool = False
) -> Iterator[BrowserContext]:
    """Debian's Chromium with a fresh profile (``playwright install`` is neither needed nor possible).

    ``ignore_https_errors``: for a site whose certificate a test CA signed (nginx in front, TLS).
    """
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport=viewport,
            ignore_https_errors=ignore_https_errors,
        )
        try:
            yield context
        finally:
            context.close()


def screenshot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
