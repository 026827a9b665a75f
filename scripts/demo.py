"""``make run``: the upload server, its dashboard and a simulated robot recording and uploading, on 127.0.0.1.

Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops the robot first (it closes
its open split and checkpoints its uploads), then the server. The server is
gunicorn with the shipped ``gunicorn.conf.py``, as in production, and logs
plain text. Everything lives under ``demo-data/``, the demo's keys too
(``demo-data/keys/``, 0600): a second run reuses them and resumes whatever the
first left unfinished.
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
from core.server.keys import parse_token  # noqa: E402

DATA = ROOT / os.environ.get("DEMO_DATA", "demo-data")
PORT = int(os.environ.get("DEMO_PORT", "8080"))
SERVER = f"http://127.0.0.1:{PORT}"
ROBOT_ID = os.environ.get("DEMO_ROBOT_ID", "demo-robot")


def server_env() -> dict[str, str]:
    return {**os.environ, "HOST": "127.0.0.1", "PORT": str(PORT), "UPLOAD_DIR": str(DATA / "uploads")}


def keys_cli(*args: str, check: bool = True) -> str:
    """Run the server's own ``flask keys`` CLI against the demo's store; its standard output."""
    argv = [sys.executable, "-m", "flask", "--app", "upload_server", "keys", *args]
    return subprocess.run(argv, cwd=ROOT, env=server_env(), capture_output=True, text=True, check=check).stdout


def demo_key(name: str, *, admin: bool) -> str:
    """The demo's key for ``name``: the one saved by an earlier run while it is still active, else a new one.

    Exactly one active key per name: a saved token whose key id is no longer
    listed (revoked, or a fresh store) is replaced, and the name's other keys revoked.
    """
    saved = DATA / "keys" / f"{name}.key"
    if saved.exists():
        token = saved.read_text().strip()
        parsed = parse_token(token)
        key_id = parsed[0] if parsed else ""
        if key_id and any(
            line.split()[:1] == [name] and key_id in line.split() for line in keys_cli("list").splitlines()
        ):
            return token
    keys_cli("revoke", name, check=False)  # "no active key" on a first run is fine
    token = keys_cli("create", name, *(["--admin"] if admin else [])).strip().splitlines()[-1]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.touch(mode=0o600)
    saved.write_text(token + "\n")
    return token


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Children started so far (server first): stopped in reverse order whatever interrupts the start.
RUNNING: list[subprocess.Popen[bytes]] = []


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def start(argv: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only this script, which stops the children in order).

    Stop signals are held back while it forks, so none can interrupt ``Popen``
    between the fork and the return of the handle we need to stop it with; the
    child unblocks them before exec.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        with (DATA / log_name).open("ab") as log:
            child = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_unblock_stop_signals,
            )
        RUNNING.append(child)  # before a held-back signal can be delivered
        return child
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop the children in order, as Ctrl-C does."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def stop(proc: subprocess.Popen[bytes] | None, name: str, timeout: float, sig: signal.Signals = signal.SIGINT) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"demo: {name} did not stop within {timeout:.0f} s; killing it")
            proc.kill()
            proc.wait()


def run(robot_env: dict[str, str], admin_key: str | None) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start the server, then the robot once the server answers, print where everything is; (server, robot)."""
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{PORT}"]
    workers = os.environ.get("DEMO_WORKERS", "2")
    server = start([*gunicorn, "-w", workers, "upload_server:app"], "server.log", server_env())
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
    return server, robot


def main() -> int:
    (DATA / "robot").mkdir(parents=True, exist_ok=True)
    robot_env = {**os.environ, "ROBOT_ID": ROBOT_ID}
    admin_key = None
    if auth_enabled():
        robot_env["UPLOAD_API_KEY"] = demo_key(ROBOT_ID, admin=False)
        admin_key = demo_key("demo-admin", admin=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    try:
        server, robot = run(robot_env, admin_key)
        while server.poll() is None and robot.poll() is None:
            time.sleep(0.5)
        print("demo: a component exited on its own; see the logs above. Stopping.")
    except (KeyboardInterrupt, Stop) as why:
        print(f"\ndemo: {why or 'Ctrl-C'}: stopping the robot (closing its open split), then the server…", flush=True)
    finally:
        # A second signal while stopping must not abandon the children.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if len(RUNNING) > 1:
            stop(RUNNING[1], "the robot", 60)
        if RUNNING:
            stop(RUNNING[0], "the server", 20, signal.SIGTERM)  # gunicorn: graceful on SIGTERM
    print(f"demo: stopped. Bags: {DATA / 'robot'}  Server copies: {DATA / 'uploads'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
