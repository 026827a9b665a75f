"""A real gunicorn serving ``upload_server:app`` on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from core.protocol import AUTH_SCHEME, HEADER_AUTHORIZATION, HEALTH_PATH, UPLOAD_PREFIX
from core.server.keys import key_store_for
from tests.helpers.processes import PYTHON, REPO_ROOT, ManagedProcess, free_port, port_open, wait_until


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py upload_server:app`` configured only through the environment.

    ``restart()`` keeps the port and the storage root, so a test can kill the
    server mid-upload and resume against the same state.
    """

    def __init__(
        self,
        upload_dir: Path,
        *,
        workers: int = 4,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        scheme: str = "http",
        app: str = "upload_server:app",
        log_dir: Path | None = None,
        auth: bool = False,
    ) -> None:
        self.upload_dir = upload_dir
        self.workers = workers
        self.port = port or free_port()
        self.scheme = scheme
        self.extra_args = list(extra_args)
        self.app = app  # tests.helpers.older_server:app answers as an older release
        # Auth and rate limits have their own tests; other tests opt in through ``env``.
        self.env = {
            "UPLOAD_DIR": str(upload_dir),
            "PYTHONUNBUFFERED": "1",
            "AUTH_ENABLED": "1" if auth else "0",
            "RATELIMIT_ENABLED": "0",
            **(env or {}),
        }
        # auth=True: a robot key ("robot-1") and an admin key ("admin") exist before the server starts.
        self.robot_key = self.admin_key = ""
        if auth:
            keys = key_store_for(upload_dir)
            self.robot_key = keys.create("robot-1").token
            self.admin_key = keys.create("admin", admin=True).token
        self.log_path = (log_dir or upload_dir.parent) / f"gunicorn-{self.port}.log"
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def upload_url(self) -> str:
        return self.url + UPLOAD_PREFIX

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        """Request headers carrying ``key`` (default: the robot key; none when auth is off)."""
        token = self.robot_key if key is None else key
        return {**({HEADER_AUTHORIZATION: f"{AUTH_SCHEME} {token}"} if token else {}), **extra}

    def argv(self) -> list[str]:
        return [
            PYTHON, "-m", "gunicorn",
            "-c", str(REPO_ROOT / "gunicorn.conf.py"),
            "-w", str(self.workers),
            "-b", f"127.0.0.1:{self.port}",
            *self.extra_args,
            self.app,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> GunicornServer:
        self.process = ManagedProcess(self.argv(), log_path=self.log_path, env=self.env).start()
        try:
            wait_until(self._healthy, timeout, 0.1, f"gunicorn on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"gunicorn did not become healthy; log:\n{self.log()}") from None
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"gunicorn exited early; log:\n{self.log()}")
        try:
            verify = os.environ.get("REQUESTS_CA_BUNDLE", True) if self.scheme == "https" else True
            return requests.get(self.url + HEALTH_PATH, timeout=1, verify=verify).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the master only; orphaned workers may finish requests for a while (``crash()`` kills all)."""
        if self.process is not None:
            self.process.kill()

    def crash(self, timeout: float = 15.0) -> None:
        """SIGKILL the master and every worker at once, like a power cut; returns when the port is free.

        ``kill()`` alone leaves orphaned workers finishing requests (and holding the port) for up to
        ``graceful_timeout``.
        """
        if self.process is None or not self.process.alive():
            return
        workers = self.worker_pids()
        self.process.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not port_open(self.port), timeout, 0.05, f"port {self.port} to close")

    def worker_pids(self) -> list[int]:
        """The master's children (its workers) right now."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def restart(self, timeout: float = 30.0) -> GunicornServer:
        self.stop()
        return self.start(timeout)

    def log(self) -> str:
        return self.process.log() if self.process else ""

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
