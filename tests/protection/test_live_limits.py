"""Against 4 real gunicorn workers sharing a real redis: limits hold exactly, and 429s are JSON with headers."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from core.config import ServerConfig
from tests.helpers.redis_server import RedisServer
from tests.helpers.servers import GunicornServer

pytestmark = [pytest.mark.gunicorn, pytest.mark.redis]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[GunicornServer]:
    """4 workers, the default limits but a small per-key status limit, counters in redis."""
    env = {"RATELIMIT_ENABLED": "1", "RATELIMIT_STORAGE_URI": redis.url, "RATELIMIT_KEY_STATUS": "10 per hour"}
    with GunicornServer(tmp_path_factory.mktemp("limited") / "uploads", workers=4, auth=True, env=env) as server:
        yield server


def test_limit_holds_exactly_across_four_workers(limited: GunicornServer) -> None:
    def status(_: int) -> int:
        # A fresh connection per request: gunicorn hands each to whichever worker accepts first.
        return requests.get(f"{limited.url}/upload/nope", headers=limited.headers(), timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = Counter(pool.map(status, range(40)))

    assert codes == {404: 10, 429: 30}


def seed_curl_loop(url: str, tmp_path: Path, *headers: str) -> list[str]:
    """DEPLOYMENT.md's check, the seed's loop: `for i in {1..100}; do curl -X POST …/upload/init …; done`."""
    extra = "".join(f" -H '{h}'" for h in headers)
    script = tmp_path / "loop.sh"
    script.write_text(
        "for i in $(seq 1 100); do\n"
        f"  curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST {url}/upload/init{extra} \\\n"
        """    -H 'Content-Type: application/json' -d '{"filename":"test.bag","filesize":1000,"chunks":1}'\n"""
        "done\n"
    )
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()


def test_seed_curl_loop_without_a_key_meets_429(limited: GunicornServer, tmp_path: Path) -> None:
    codes = seed_curl_loop(limited.url, tmp_path)

    budget = int(ServerConfig().ratelimit_unauthenticated.split()[0])
    assert codes == ["401"] * budget + ["429"] * (100 - budget)


def test_seed_curl_loop_with_a_robot_key_meets_the_per_key_budget_only(limited: GunicornServer, tmp_path: Path) -> None:
    codes = seed_curl_loop(limited.url, tmp_path, f"Authorization: Bearer {limited.admin_key}")

    budget = int(ServerConfig().ratelimit_key_init.split()[0])
    assert set(codes[:budget]) <= {"200", "201"}
    assert codes[budget:] == ["429"] * (100 - budget)


def test_429_is_json_with_retry_after_and_ratelimit_headers(limited: GunicornServer) -> None:
    headers = limited.headers(limited.admin_key)
    replies = [requests.get(f"{limited.url}/upload/other", headers=headers, timeout=10) for _ in range(11)]

    last = replies[-1]
    assert last.status_code == 429
    assert last.json() == {
        "success": False,
        "error": {"code": "rate_limited", "message": last.json()["error"]["message"]},
    }
    assert 0 < int(last.headers["Retry-After"]) <= 3601
    assert last.headers["X-RateLimit-Limit"] == "10"
    assert last.headers["X-RateLimit-Remaining"] == "0"
    assert int(last.headers["X-RateLimit-Reset"]) > 0
    assert replies[0].headers["X-RateLimit-Remaining"] == "9"


def test_health_stays_open_under_limits(limited: GunicornServer) -> None:
    assert {requests.get(limited.url + "/health", timeout=10).status_code for _ in range(30)} == {200}
