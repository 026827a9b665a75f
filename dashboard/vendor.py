"""Browser files of third parties the dashboard serves itself (Uppy, a streaming sha256): where, and how installed.

The page loads nothing from a CDN (its CSP allows only 'self'), and the files are
not committed: ``make assets`` (``python3 dashboard/vendor.py``) runs ``npm ci``
on the pinned ``dashboard/assets/package-lock.json`` and copies the few files the
page needs into ``dashboard/static/vendor/``, which the blueprint's static route
serves under ``/dashboard/static/vendor/``. A server without them still serves
the dashboard: the "Upload a bag" button is disabled and says why, and the log
says so once at start.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("upload_server.dashboard")

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"  # package.json + package-lock.json (committed); node_modules (ignored)
VENDOR_DIR = PACKAGE_DIR / "static" / "vendor"  # what the page loads (ignored by git, shipped in a built wheel)
URL_FOLDER = "vendor"  # under the blueprint's static route
# Served name -> its source inside node_modules. Uppy's prebuilt bundle avoids a bundler of our own.
FILES = {
    "uppy.min.js": "uppy/dist/uppy.min.js",
    "uppy.min.css": "uppy/dist/uppy.min.css",
    "sha256.min.js": "js-sha256/build/sha256.min.js",
}
INSTALL_HINT = "run `make assets` (npm ci in dashboard/assets) on the server; see DEPLOYMENT.md"


def missing(vendor_dir: Path | None = None) -> list[str]:
    """The served files not installed (in ``vendor_dir``, default VENDOR_DIR); empty when the upload button works."""
    folder = VENDOR_DIR if vendor_dir is None else vendor_dir
    return [name for name in FILES if not (folder / name).is_file()]


def static_path(name: str) -> str:
    """A vendor file's path for ``url_for('dashboard.static', filename=…)``."""
    return f"{URL_FOLDER}/{name}"


def report_missing() -> list[str]:
    """Log once (at app start) what is missing, so an operator wondering about a greyed-out button finds why."""
    absent = missing()
    if absent:
        log.warning(
            "dashboard: upload button disabled: %s missing in %s; %s", ", ".join(absent), VENDOR_DIR, INSTALL_HINT
        )
    return absent


def _installed(assets_dir: Path) -> bool:
    """node_modules holds every source file and was installed from the current lock file."""
    hidden_lock = assets_dir / "node_modules" / ".package-lock.json"  # npm writes it at each install
    return (
        hidden_lock.is_file()
        and hidden_lock.stat().st_mtime >= (assets_dir / "package-lock.json").stat().st_mtime
        and all((assets_dir / "node_modules" / source).is_file() for source in FILES.values())
    )


def install(assets_dir: Path = ASSETS_DIR, vendor_dir: Path = VENDOR_DIR, npm: str = "npm") -> list[Path]:
    """``npm ci`` the pinned packages (no install scripts run), then copy the served files in place.

    Each file appears atomically (copy to a temporary name, then rename): a server
    reading the folder meanwhile sees the old file or the new one, never half of one.
    """
    if not _installed(assets_dir):
        argv = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        subprocess.run(argv, cwd=assets_dir, check=True)  # noqa: S603 - fixed argv, no shell
    vendor_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    for name, source in FILES.items():
        target = vendor_dir / name
        tmp = target.with_name(f".{name}.{os.getpid()}")
        shutil.copyfile(assets_dir / "node_modules" / source, tmp)
        tmp.replace(target)
        installed.append(target)
    return installed


def main() -> None:
    """``python3 dashboard/vendor.py`` (what ``make assets`` runs; standard library only, no venv needed)."""
    for path in install():
        print(f"installed {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
