"""The documented ways to run the server: ``python3 upload_server.py``, gunicorn's config, the ``flask`` CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, free_port, wait_until

ENV = {"AUTH_ENABLED": "0", "RATELIMIT_ENABLED": "0"}


def test_dev_server_serves_on_host_and_port_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {**ENV, "UPLOAD_DIR": str(tmp_path / "uploads"), "HOST": "127.0.0.1", "PORT": str(port)}
    url = f"http://127.0.0.1:{port}/health"

    def healthy() -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    with ManagedProcess([PYTHON, "upload_server.py"], log_path=tmp_path / "dev.log", env=env):
        wait_until(healthy, 30, 0.1, "python upload_server.py")
        assert requests.get(url, timeout=5).json()["status"] == "ok"
    assert (tmp_path / "uploads" / "state.sqlite3").exists()


def test_gunicorn_config_is_valid(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "--check-config", "-c", "gunicorn.conf.py", "upload_server:app"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "UPLOAD_DIR": str(tmp_path), **ENV},
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def test_sweep_command_runs_from_the_shell(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "sweep"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "UPLOAD_DIR": str(tmp_path / "uploads"), **ENV},
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "expired 0 upload(s)" in result.stdout
