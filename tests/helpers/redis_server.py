"""A real ``redis-server`` (Debian's) on a free 127.0.0.1 port, without persistence, stopped by PID."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tests.helpers.processes import ManagedProcess, free_port, wait_until

REDIS_SERVER = "/usr/bin/redis-server"


def redis_available() -> bool:
    return shutil.which(REDIS_SERVER) is not None


class RedisServer:
    """``with RedisServer(tmp_path) as redis: ... redis.url`` — an empty redis that dies with the test."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip

    def ping(self) -> bool:
        """True once the server answers PING (raw RESP, so this helper needs no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"redis-{self.port}.log"
        self.process = ManagedProcess(self.argv(), log_path=log_path).start()
        try:
            wait_until(self.ping, timeout, 0.05, f"redis-server on port {self.port}")
        except TimeoutError:
            log = self.process.log()
            self.stop()
            raise RuntimeError(f"redis-server did not start; log:\n{log}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
