"""Against a real gunicorn: keys, revocation across workers, and robots that cannot see each other's uploads."""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from core.server.keys import key_store_for, parse_token
from tests.helpers.processes import PYTHON, REPO_ROOT
from tests.helpers.servers import GunicornServer
from tests.protection.conftest import upload_small_file

pytestmark = pytest.mark.gunicorn

PROTECTED = [
    ("POST", "/upload/init"),
    ("PUT", "/upload/x/chunk/0"),
    ("GET", "/upload/x"),
    ("DELETE", "/upload/x"),
    ("POST", "/upload/x/finalize"),
    ("GET", "/uploads"),
    ("GET", "/uploads/x/file"),
    ("POST", "/robots/robot-1/heartbeat"),
    ("GET", "/metrics"),
    ("GET", "/health/detailed"),
]


def flask_keys(server: GunicornServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The admin's command line, exactly as documented: `flask --app upload_server keys …`."""
    env = {**os.environ, **server.env}
    return subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "keys", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_but_health_needs_a_key(live: GunicornServer, method: str, path: str) -> None:
    reply = requests.request(method, live.url + path, json={}, timeout=10)

    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
def test_public_routes_answer_without_a_key(live: GunicornServer, path: str) -> None:
    assert requests.get(live.url + path, timeout=10).status_code == 200


def test_a_robot_cannot_touch_another_robots_upload(live: GunicornServer) -> None:
    other = key_store_for(live.upload_dir).create("robot-2").token  # created while the server runs
    upload_id = upload_small_file(live, b"robot one's bag " * 100).json()["upload_id"]
    base = f"{live.url}/upload/{upload_id}"
    as_other = live.headers(other)

    attempts = {
        "status": requests.get(base, headers=as_other, timeout=10),
        "chunk": requests.put(f"{base}/chunk/0", data=b"x", headers=as_other, timeout=10),
        "finalize": requests.post(f"{base}/finalize", headers=as_other, timeout=10),
        "download": requests.get(f"{live.url}/uploads/{upload_id}/file", headers=as_other, timeout=10),
        "abort": requests.delete(base, headers=as_other, timeout=10),
    }

    assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 404)
    assert all(r.json()["error"]["code"] == "not_found" for r in attempts.values())
    listing = requests.get(f"{live.url}/uploads", headers=as_other, timeout=10).json()
    assert upload_id not in {u["upload_id"] for u in listing["uploads"]}
    # The owner and an admin still see it, untouched.
    mine = requests.get(base, headers=live.headers(), timeout=10).json()
    assert (mine["owner"], mine["state"], mine["received_count"]) == ("robot-1", "uploading", 1)
    admin = requests.get(base, headers=live.headers(live.admin_key), timeout=10)
    assert admin.status_code == 200
    all_uploads = requests.get(f"{live.url}/uploads", headers=live.headers(live.admin_key), timeout=10).json()
    assert upload_id in {u["upload_id"] for u in all_uploads["uploads"]}


def test_keys_cli_create_then_revoke_takes_effect_in_every_worker(live: GunicornServer) -> None:
    created = flask_keys(live, "create", "robot-cli")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert {
        requests.get(live.url + "/uploads", headers=live.headers(key), timeout=10).status_code for _ in range(8)
    } == {200}

    revoked = flask_keys(live, "revoke", "robot-cli")
    assert revoked.returncode == 0, revoked.stderr

    codes = {requests.get(live.url + "/uploads", headers=live.headers(key), timeout=10).status_code for _ in range(8)}
    assert codes == {401}
    listed = flask_keys(live, "list", "--all")
    assert "robot-cli" in listed.stdout
    parsed = parse_token(key)
    assert parsed is not None
    assert parsed[1] not in listed.stdout


def test_x_api_key_header_works_live(live: GunicornServer) -> None:
    reply = requests.get(live.url + "/uploads", headers={"X-API-Key": live.robot_key}, timeout=10)

    assert reply.status_code == 200
