"""The seed's keyless curl loop against 4 real gunicorn workers sharing a real redis: 30 401s, then JSON 429s."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from core.config import ServerConfig
from core.protocol import INIT_PATH
from tests.helpers.redis_server import RedisServer
from tests.helpers.servers import GunicornServer

pytestmark = [pytest.mark.gunicorn, pytest.mark.redis]

DEFAULT_BUDGET = int(ServerConfig.ratelimit_unauthenticated.split()[0])
SEP = "\x1f"
# curl prints the body (JSON ending in a newline), then SEP and the status code.
REPLY = re.compile(rf"(.*?){SEP}(\d{{3}})\n", flags=re.DOTALL)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[GunicornServer]:
    """4 workers with auth on and the default limits, counters in redis."""
    env = {"RATELIMIT_ENABLED": "1", "RATELIMIT_STORAGE_URI": redis.url}
    with GunicornServer(tmp_path_factory.mktemp("keyed") / "uploads", workers=4, auth=True, env=env) as server:
        yield server


def seed_loop(url: str, tmp_path: Path) -> list[tuple[str, str]]:
    """The seed's loop, unchanged but for printing each reply's status and body: (status, body) per request."""
    script = tmp_path / "loop.sh"
    script.write_text(
        "for i in {1..100}; do\n"
        f"  curl -s -w '{SEP}%{{http_code}}\\n' -X POST {url}/upload/init -H 'Content-Type: application/json' \\\n"
        """    -d '{"filename":"test.bag","filesize":1000,"chunks":1}'\n"""
        "done\n"
    )
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, check=True)
    return [(status, body) for body, status in REPLY.findall(done.stdout)]


def test_seed_keyless_curl_loop_ends_in_json_429s_and_a_robot_key_still_works(
    keyed: GunicornServer, tmp_path: Path
) -> None:
    replies = seed_loop(keyed.url, tmp_path)

    statuses = [status for status, _ in replies]
    assert statuses == ["401"] * DEFAULT_BUDGET + ["429"] * (100 - DEFAULT_BUDGET)
    assert json.loads(replies[-1][1])["error"]["code"] == "rate_limited"
    assert json.loads(replies[0][1])["error"]["code"] == "unauthorized"

    robot = requests.post(
        keyed.url + INIT_PATH,
        json={"filename": "test.bag", "filesize": 1000, "chunks": 1},
        headers=keyed.headers(keyed.robot_key),
        timeout=10,
    )
    assert robot.status_code in (200, 201), robot.text

    still_limited = requests.get(f"{keyed.url}/uploads", timeout=10)
    assert still_limited.status_code == 429
    assert 0 < int(still_limited.headers["Retry-After"]) <= 60
    assert still_limited.headers["X-RateLimit-Limit"] == str(DEFAULT_BUDGET)
    assert still_limited.headers["X-RateLimit-Remaining"] == "0"
    assert requests.get(keyed.url + "/health", timeout=10).status_code == 200
