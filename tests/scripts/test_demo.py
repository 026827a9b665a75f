"""``make run`` (scripts/demo.py): it stops its server and robot on SIGTERM/SIGHUP, logs plain text, reuses its keys."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.processes import PYTHON, REPO_ROOT, free_port, port_open, wait_until

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the demo's server and robot), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def run_demo_until(data: Path, sig: signal.Signals) -> tuple[list[int], str]:
    """Start the demo, wait until its server answers and its robot runs, send ``sig``; (children, stdout)."""
    port = free_port()
    env = {**os.environ, "DEMO_DATA": str(data), "DEMO_PORT": str(port), "DEMO_SPLIT_SECONDS": "2"}
    demo = subprocess.Popen([PYTHON, "scripts/demo.py"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: port_open(port) and len(children(demo.pid)) == 2, timeout=60, what="demo server and robot")
        robot_log = data / "robot.log"
        wait_until(lambda: robot_log.exists() and robot_log.stat().st_size > 0, timeout=60, what="robot log lines")
        kids = children(demo.pid)
        demo.send_signal(sig)
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, out
    return kids, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stops_server_and_robot_on_signal_and_logs_plain_text(tmp_path: Path, sig: signal.Signals) -> None:
    kids, out = run_demo_until(tmp_path / "demo", sig)

    assert len(kids) == 2
    wait_until(lambda: not any(alive(pid) for pid in kids), timeout=10, what="demo children gone")
    assert sig.name in out
    for log in ("server.log", "robot.log"):
        text = (tmp_path / "demo" / log).read_text()
        assert text
        assert "\x1b[" not in text, log


def test_a_second_demo_run_reuses_its_keys(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    run_demo_until(data, signal.SIGTERM)
    first = (data / "keys" / "demo-admin.key").read_text()
    run_demo_until(data, signal.SIGTERM)

    env = {**os.environ, "UPLOAD_DIR": str(data / "uploads")}
    listing = subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "keys", "list", "--all"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = [line.split()[0] for line in listing.splitlines()[1:]]
    assert names.count("demo-admin") == 1
    assert names.count("demo-robot") == 1
    assert (data / "keys" / "demo-admin.key").read_text() == first
    assert (data / "keys" / "demo-admin.key").stat().st_mode & 0o777 == 0o600
