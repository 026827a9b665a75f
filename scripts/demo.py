"""``make run``: the upload server, its dashboard and a simulated robot recording and uploading, on 127.0.0.1.

Ctrl-C stops the robot first (it closes its open split and checkpoints its
uploads), then the server. Everything lives under ``demo-data/``; a second run
resumes whatever the first left unfinished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.protocol import HEALTH_PATH, UPLOAD_PREFIX  # noqa: E402 - after making the checkout importable

DATA = ROOT / os.environ.get("DEMO_DATA", "demo-data")
PORT = int(os.environ.get("DEMO_PORT", "8080"))
SERVER = f"http://127.0.0.1:{PORT}"
ROBOT_ID = os.environ.get("DEMO_ROBOT_ID", "demo-robot")


def server_env() -> dict[str, str]:
    return {**os.environ, "HOST": "127.0.0.1", "PORT": str(PORT), "UPLOAD_DIR": str(DATA / "uploads")}


def create_key(name: str, *, admin: bool) -> str:
    """A key from the server's own CLI; the token is alone on the last line of its output."""
    argv = [sys.executable, "-m", "flask", "--app", "upload_server", "keys", "create", name]
    if admin:
        argv.append("--admin")
    result = subprocess.run(argv, cwd=ROOT, env=server_env(), capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def auth_enabled() -> bool:
    return os.environ.get("AUTH_ENABLED", "1").strip().lower() not in {"0", "false", "no", "off"}


def wait_healthy(server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the upload server exited with status {server.returncode}; see {DATA / 'server.log'}")
        try:
            if requests.get(SERVER + HEALTH_PATH, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"demo: the upload server did not answer on {SERVER} within {timeout:.0f} s")


def start(argv: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches only this script, which then stops the children in order.
    with (DATA / log_name).open("ab") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"demo: {name} did not stop within {timeout:.0f} s; killing it")
            proc.kill()
            proc.wait()


def main() -> int:
    (DATA / "robot").mkdir(parents=True, exist_ok=True)
    robot_env = {**os.environ, "ROBOT_ID": ROBOT_ID}
    admin_key = None
    if auth_enabled():
        robot_env["UPLOAD_API_KEY"] = create_key(ROBOT_ID, admin=False)
        admin_key = create_key("demo-admin", admin=True)
    server = start([sys.executable, "upload_server.py"], "server.log", server_env())
    wait_healthy(server)
    split_seconds = os.environ.get("DEMO_SPLIT_SECONDS", "10")
    robot_argv = [
        sys.executable, "-m", "ros_nodes.simulate",
        "--output", str(DATA / "robot"), "--robot-id", ROBOT_ID,
        "--max-bag-duration", split_seconds,
        "--upload-url", SERVER + UPLOAD_PREFIX, "--wait-uploads", "20",
    ]  # fmt: skip
    robot = start(robot_argv, "robot.log", robot_env)
    print(
        f"""
Demo running (Ctrl-C stops everything):
  upload server  {SERVER}   (health: {SERVER}{HEALTH_PATH}, uploads: {SERVER}/uploads)
  dashboard      {SERVER}/dashboard/
  admin key      {admin_key or "(auth disabled)"}   <- sign in to the dashboard with it
  robot bags     {DATA / "robot"}   (splits every {split_seconds} s, uploaded as they close)
  server store   {DATA / "uploads"}
  logs           {DATA / "server.log"}, {DATA / "robot.log"}
""",
        flush=True,
    )
    try:
        while server.poll() is None and robot.poll() is None:
            time.sleep(0.5)
        print("demo: a component exited on its own; see the logs above. Stopping.")
    except KeyboardInterrupt:
        print("\ndemo: stopping the robot (closing its open split), then the server…", flush=True)
    finally:
        stop(robot, "the robot", 60)
        stop(server, "the server", 20)
    print(f"demo: stopped. Bags: {DATA / 'robot'}  Server copies: {DATA / 'uploads'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
