"""Scale-out as DEPLOYMENT.md describes it: nginx (TLS, round robin) → two gunicorns that share no disk.

They share one PostgreSQL (state), one S3-compatible object store (SeaweedFS here: every chunk and
stored bag) and one Redis (rate-limit counters only). Each instance has its own empty UPLOAD_DIR,
as two hosts would: no bag byte and no SQLite file may land there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from core.config import ServerConfig
from core.heartbeat import HeartbeatReporter
from core.protocol import INIT_PATH, UPLOADS_PATH, ErrorCode, MiB, RobotAction, chunk_count
from core.server.robots import open_robot_store
from tests.deploy.client import UploadClient, write_source
from tests.helpers.nginx import NginxServer
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import PYTHON, REPO_ROOT
from tests.helpers.redis_server import RedisServer
from tests.helpers.seaweedfs import SeaweedFS
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import TLSFiles, make_tls_files

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn, pytest.mark.redis, pytest.mark.postgres]

CHUNK = 8 * MiB
DASHBOARD_STATE = "/dashboard/api/state"
INIT_LIMIT = 20  # a key's init budget here (RATELIMIT_KEY_INIT); below nginx's burst of 40 per address
ROBOT, OPERATOR = "robot-hb", "operator"
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@dataclass
class Cluster:
    nginx: NginxServer
    apps: list[GunicornServer]
    tls: TLSFiles
    keys: dict[str, str]
    access_logs: list[Path]
    state_store_uri: str

    def bearer(self, key_name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_name]}"}

    def dashboard_state(self, app: int) -> dict[str, Any]:
        reply = requests.get(self.apps[app].url + DASHBOARD_STATE, headers=self.bearer(OPERATOR), timeout=10)
        assert reply.status_code == 200, reply.text
        state: dict[str, Any] = reply.json()
        return state

    def client(self, key_name: str, app: int | None = None) -> UploadClient:
        """A client through nginx, or straight to instance ``app``."""
        url = self.nginx.url if app is None else self.apps[app].url
        client = UploadClient(url, verify=str(self.tls.ca), retries=8)
        client.session.headers["Authorization"] = f"Bearer {self.keys[key_name]}"
        return client

    def chunk_puts(self, app: int) -> int:
        text = self.access_logs[app].read_text() if self.access_logs[app].exists() else ""
        return len(re.findall(r'"PUT /upload/\w+/chunk/\d+ ', text))

    def inits(self, app: int) -> int:
        text = self.access_logs[app].read_text() if self.access_logs[app].exists() else ""
        return text.count(f'"POST {INIT_PATH} ')


def kill_instance(app: GunicornServer) -> None:
    """SIGKILL the master and its workers at once, like a crashed host: orphaned workers would keep serving."""
    assert app.process is not None
    master = app.process.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    app.kill()


def flask_keys(app: GunicornServer, *args: str) -> str:
    """``flask --app upload_server keys …`` on ``app``'s host: its environment, so its key store."""
    env = {name: app.env[name] for name in ("UPLOAD_DIR", "STATE_STORE_URI", "BLOB_STORE_URI", *S3_ENV)}
    result = subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "keys", *args],
        cwd=REPO_ROOT,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def create_key(app: GunicornServer, name: str, *, admin: bool = False) -> str:
    return flask_keys(app, "create", name, *(["--admin"] if admin else [])).strip().splitlines()[-1]


def host_bytes(app: GunicornServer) -> int:
    """Bytes of every file in an instance's own local folder (its logs and the bags live elsewhere)."""
    return sum(p.stat().st_size for p in app.upload_dir.rglob("*") if p.is_file())


def sqlite_files_in_use(app: GunicornServer) -> list[str]:
    """SQLite files (and their -wal/-shm) the master or any worker of ``app`` holds open."""
    assert app.process is not None
    master = app.process.pid
    pids = [master, *map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split())]
    targets = [os.readlink(fd) for pid in pids for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.is_symlink()]
    return [target for target in targets if ".sqlite3" in target]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, seaweedfs: SeaweedFS
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    hosts = [base / "host-a", base / "host-b"]  # each instance's own local folder, empty at start
    for host in hosts:
        host.mkdir()
    state_store_uri = postgres.create_database()
    blobs = {**seaweedfs.env(), "BLOB_STORE_URI": f"s3://{seaweedfs.new_bucket()}/fleet"}
    # As DEPLOYMENT.md says: create the schema before the first server starts.
    subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "db", "upgrade"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "UPLOAD_DIR": str(hosts[0]), "STATE_STORE_URI": state_store_uri, **blobs},
        capture_output=True,
        timeout=60,
        check=True,
    )
    with RedisServer(base / "redis") as redis:
        shared = {
            **blobs,
            "AUTH_ENABLED": "1",
            "RATELIMIT_ENABLED": "1",
            "STATE_STORE_URI": state_store_uri,
            "RATELIMIT_STORAGE_URI": redis.url,
            "RATELIMIT_KEY_INIT": f"{INIT_LIMIT} per hour",
            "TRUSTED_PROXIES": "127.0.0.1",
        }
        logs = [base / "access-a.log", base / "access-b.log"]
        apps = [
            GunicornServer(host, workers=2, env={**shared, "GUNICORN_ACCESS_LOG": str(log)}, log_dir=base)
            for host, log in zip(hosts, logs, strict=True)
        ]
        # Keys are created with the CLI before the servers start, as DEPLOYMENT.md says: they go to PostgreSQL.
        keys = {name: create_key(apps[0], name) for name in ("robot-big", "robot-burst", ROBOT)}
        keys[OPERATOR] = create_key(apps[1], OPERATOR, admin=True)
        for app in apps:
            app.start()
        tls = make_tls_files(base / "tls")
        nginx = NginxServer(base / "nginx", upstream_ports=[a.port for a in apps], cert=tls.cert, key=tls.key)
        try:
            nginx.start()
            yield Cluster(nginx, apps, tls, keys, logs, shared["STATE_STORE_URI"])
        finally:
            nginx.stop()
            for app in apps:
                app.stop()


def test_rate_limit_holds_exactly_across_both_instances(cluster: Cluster) -> None:
    client = cluster.client("robot-burst")
    codes = []
    for n in range(INIT_LIMIT + 10):
        body = {"filename": f"burst-{n}.bag", "filesize": 1000, "chunks": 1}
        reply = client.session.post(cluster.nginx.url + INIT_PATH, json=body, verify=client.verify, timeout=30)
        codes.append(reply.status_code)
        if reply.status_code == 429:
            assert reply.json()["error"]["code"] == ErrorCode.RATE_LIMITED.value
            assert "Retry-After" in reply.headers
    assert codes.count(201) == INIT_LIMIT, codes
    assert codes[INIT_LIMIT:] == [429] * 10
    assert cluster.inits(0) > 0
    assert cluster.inits(1) > 0


def test_robot_status_and_operator_commands_are_shared_by_both_instances(cluster: Cluster) -> None:
    ran: list[RobotAction] = []
    recorder = {"state": "recording", "current_bag": "run-1_0.mcap", "bytes_written": 4096}

    def run(action: RobotAction, _args: object) -> str:
        ran.append(action)
        return f"{action.value}d"

    robot = HeartbeatReporter(
        cluster.apps[0].url,  # this robot always reaches instance A, the operator instance B
        ROBOT,
        sources={"recorder": lambda: recorder},
        handler=run,
        api_key=cluster.keys[ROBOT],
    )
    assert robot.beat() == 0

    (row,) = [r for r in cluster.dashboard_state(1)["fleet"] if r["robot_id"] == ROBOT]
    assert (row["online"], row["recording_state"], row["current_bag"]) == (True, "recording", "run-1_0.mcap")

    reply = requests.post(
        f"{cluster.apps[1].url}/dashboard/api/robots/{ROBOT}/commands",
        json={"action": "pause"},
        headers=cluster.bearer(OPERATOR),
        timeout=10,
    )
    assert reply.status_code == 202, reply.text
    command_id = reply.json()["command"]["id"]
    assert robot.beat() == 1  # delivered through A, run by the robot
    assert ran == [RobotAction.PAUSE]
    robot.beat()  # acknowledged through A

    (command,) = [c for c in cluster.dashboard_state(1)["commands"] if c["id"] == command_id]
    assert (command["state"], command["message"], command["robot_id"]) == ("done", "paused", ROBOT)
    assert [c["id"] for c in cluster.dashboard_state(0)["commands"]] == [command_id]
    # Shared through PostgreSQL, not through an SQLite file beside the uploads (which works on one host only).
    shared = open_robot_store(ServerConfig(state_store_uri=cluster.state_store_uri))
    assert ROBOT in [r.robot_id for r in shared.robots()]
    shared.close()


def test_a_key_made_with_one_hosts_cli_works_on_both_and_revoking_it_on_the_other_is_immediate(
    cluster: Cluster,
) -> None:
    token = create_key(cluster.apps[0], "robot-rotated")
    headers = {"Authorization": f"Bearer {token}"}
    for app in cluster.apps:
        assert requests.get(app.url + UPLOADS_PATH, headers=headers, timeout=10).status_code == 200
    assert "robot-rotated" in flask_keys(cluster.apps[1], "list")

    assert "Revoked 1 key(s)" in flask_keys(cluster.apps[1], "revoke", "robot-rotated")

    for app in cluster.apps:
        reply = requests.get(app.url + UPLOADS_PATH, headers=headers, timeout=10)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == ErrorCode.UNAUTHORIZED.value
    assert "robot-rotated" not in flask_keys(cluster.apps[0], "list")


def test_no_bag_byte_and_no_sqlite_file_lands_on_either_host(cluster: Cluster, tmp_path: Path) -> None:
    key = "robot-small"
    cluster.keys[key] = create_key(cluster.apps[1], key)
    source = write_source(tmp_path / "small.mcap", 3 * MiB)
    client = cluster.client(key)
    upload_id = client.upload(source, MiB)  # round robin: chunks, state and keys served by both instances
    assert client.finalize(upload_id)["state"] == "complete"
    for app in (0, 1):
        HeartbeatReporter(cluster.apps[app].url, key, sources={}, api_key=cluster.keys[key]).beat()
        assert cluster.dashboard_state(app)["server"]["requests"]["requests"] > 0

    for app in cluster.apps:
        assert sorted(p.name for p in app.upload_dir.rglob("*.sqlite3*")) == []
        assert host_bytes(app) < MiB  # the 3 MiB bag went to the object store, not to a host's disk
    assert [sqlite_files_in_use(app) for app in cluster.apps] == [[], []]


@pytest.mark.slow
def test_500_mb_upload_alternates_instances_and_survives_losing_one(cluster: Cluster, tmp_path: Path) -> None:
    source = write_source(tmp_path / "big.mcap", 500 * 1000 * 1000)
    chunks = chunk_count(source.size, CHUNK)
    kill_after = chunks // 3
    client = cluster.client("robot-big")
    seen_before_kill: list[int] = []

    def after_chunk(index: int) -> None:
        if index == kill_after:
            seen_before_kill.extend([cluster.chunk_puts(0), cluster.chunk_puts(1)])
            kill_instance(cluster.apps[0])

    upload_id = client.upload(source, CHUNK, after_chunk=after_chunk)
    status = client.finalize(upload_id, timeout=180)

    assert status["state"] == "complete"
    # Round robin sent chunks to both instances until one died; the rest went through the survivor.
    a, b = seen_before_kill
    assert a > 0
    assert b > 0
    assert abs(a - b) <= 2
    assert cluster.chunk_puts(0) <= a + 1  # nothing reached the dead instance after it died
    assert cluster.chunk_puts(1) >= chunks - a
    assert client.downloaded_sha256(upload_id) == source.sha256
    health = requests.get(cluster.apps[1].url + "/health", timeout=5)
    assert health.status_code == 200
    # The lost host comes back with nothing of its own and serves the same bytes as the survivor.
    cluster.apps[0].start()
    assert [cluster.client("robot-big", app).downloaded_sha256(upload_id) for app in (0, 1)] == [source.sha256] * 2
    assert [host_bytes(app) < MiB for app in cluster.apps] == [True, True]
