"""Rate limits: the seed's defaults per address, robot budgets per key, JSON 429s with headers, room for a robot."""

from __future__ import annotations

import math
import os
import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import limits.storage.memory
import pytest
from flask import Flask
from flask.testing import FlaskClient

import core.server.limits
from core.config import ConfigError, RecorderConfig, ServerConfig
from core.protocol import DEFAULT_CHUNK_SIZE, GiB, MiB
from core.server.app import create_app
from core.server.keys import KeyStore, key_store_for
from core.server.limit_storage import SweptMemoryStorage
from tests.helpers.processes import PYTHON, REPO_ROOT, free_port
from tests.helpers.redis_server import RedisServer
from tests.protection.conftest import bearer


class FakeTime:
    """``time`` as the rate limiter sees it, moved by the test instead of the wall clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    monkeypatch.setattr(core.server.limits, "time", fake)
    return fake


def test_anonymous_init_limit_is_the_seeds_and_answers_json_429_with_headers(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False).test_client()

    replies = [client.post("/upload/init", json={}) for _ in range(21)]

    assert [r.status_code for r in replies] == [201] * 20 + [429]
    limited = replies[-1]
    assert limited.json["success"] is False
    assert limited.json["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.headers["X-RateLimit-Limit"] == "20"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(replies[0].headers["X-RateLimit-Remaining"]) == 19


def test_a_key_gets_the_robot_budget_not_the_seeds_per_address_limit(
    make_app: Callable[..., Flask], keys: KeyStore
) -> None:
    client = make_app().test_client()
    headers = bearer(keys.create("robot-1").token)

    replies = [client.post("/upload/init", json={}, headers=headers) for _ in range(61)]

    assert [r.status_code for r in replies] == [201] * 60 + [429]
    assert replies[0].headers["X-RateLimit-Limit"] == "60"
    assert ServerConfig().ratelimit_key_init == "60 per minute"


def test_robots_behind_one_address_have_their_own_budgets(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    client = make_app(ratelimit_key_init="2 per hour").test_client()
    robot_a, robot_b = bearer(keys.create("robot-a").token), bearer(keys.create("robot-b").token)

    a = [client.post("/upload/init", json={}, headers=robot_a).status_code for _ in range(3)]
    b = [client.post("/upload/init", json={}, headers=robot_b).status_code for _ in range(3)]

    assert a == b == [201, 201, 429]


def test_anonymous_clients_are_counted_by_address(make_app: Callable[..., Flask]) -> None:
    client = make_app(auth_enabled=False, ratelimit_init="2 per hour").test_client()

    def init(address: str) -> int:
        return client.post("/upload/init", json={}, environ_base={"REMOTE_ADDR": address}).status_code

    assert [init("10.0.0.1") for _ in range(3)] == [201, 201, 429]
    assert [init("10.0.0.2") for _ in range(2)] == [201, 201]


def test_routes_without_a_limit_of_their_own_get_the_default(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    client = make_app(ratelimit_key_default="3 per hour").test_client()
    headers = bearer(keys.create("robot-1").token)

    aborts = [client.delete("/upload/u1", headers=headers).status_code for _ in range(4)]
    statuses = [client.get("/upload/u1", headers=headers).status_code for _ in range(4)]

    assert aborts == [200, 200, 200, 429]
    assert statuses == [200] * 4  # GET /upload/<id> has RATELIMIT_STATUS instead


def test_health_is_never_limited(make_app: Callable[..., Flask]) -> None:
    client = make_app(ratelimit_default="1 per hour").test_client()

    assert {client.get("/health").status_code for _ in range(5)} == {200}


def test_limits_off_means_no_429_and_no_headers(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    client = make_app(ratelimit_enabled=False).test_client()
    headers = bearer(keys.create("robot-1").token)

    replies = [client.post("/upload/init", json={}, headers=headers) for _ in range(25)]

    assert {r.status_code for r in replies} == {201}
    assert "X-RateLimit-Limit" not in replies[0].headers


def test_window_reopens_after_retry_after(make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime) -> None:
    client = make_app(ratelimit_key_chunk="2 per minute").test_client()
    headers = bearer(keys.create("robot-1").token)
    put = lambda: client.put("/upload/u1/chunk/0", data=b"x", headers=headers)  # noqa: E731

    assert [put().status_code for _ in range(3)] == [200, 200, 429]
    retry_after = int(put().headers["Retry-After"])
    assert 0 < retry_after <= 61  # the window plus the rounding of its reset time

    clock.sleep(retry_after + 1)

    assert put().status_code == 200


def test_retry_after_in_a_windows_last_second_is_one_not_zero(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime
) -> None:
    """Truncating (as flask-limiter did) gives 0 here; a client obeying 0 would be refused again at once."""
    client = make_app(ratelimit_key_chunk="2 per minute").test_client()
    headers = bearer(keys.create("robot-1").token)
    put = lambda: client.put("/upload/u1/chunk/0", data=b"x", headers=headers)  # noqa: E731
    clock.now = 1_700_000_000.7  # the window opens at a fraction of a second and closes 60 s later
    assert [put().status_code for _ in range(3)] == [200, 200, 429]

    clock.now += 59.9  # 0.1 s of the window left
    last_second = put()
    clock.sleep(int(last_second.headers["Retry-After"]))

    assert last_second.status_code == 429
    assert last_second.headers["Retry-After"] == "1"
    assert put().status_code == 200


def test_headers_and_429_are_the_ones_flask_limiter_sent(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime
) -> None:
    """Clients and nginx saw these from flask-limiter: its header values, its message, its storage keys."""
    app = make_app(ratelimit_key_status="2 per minute")
    client = app.test_client()
    headers = bearer(keys.create("robot-1").token)
    clock.now = 1_700_000_000.25  # the window closes at .25 + 60 s

    first, second, refused = (client.get("/upload/u1", headers=headers) for _ in range(3))
    clock.now += 10

    assert [first.status_code, second.status_code, refused.status_code] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in (first, second, refused)] == ["1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in (first, second, refused)} == {"2"}
    reset_at = 1_700_000_060 + 1  # int(window reset + 1)
    assert {r.headers["X-RateLimit-Reset"] for r in (first, second, refused)} == {str(reset_at)}
    assert first.headers["Retry-After"] == "60"  # every limited reply carries it: int(reset_at - now)
    assert refused.headers["Retry-After"] == "60"  # a 429's is the exact wait, rounded up: ceil(59.75)
    assert refused.json["error"] == {
        "code": "rate_limited",
        "message": "rate limit exceeded (2 per 1 minute); retry after the number of seconds in Retry-After",
    }
    # flask-limiter's key: a redis shared with an older server keeps counting in the same buckets.
    stored = list(app.extensions[core.server.limits.EXTENSION].storage.storage)
    assert stored == ["LIMITER/upload/key:robot-1/upload:GET/2/1/minute"]


def test_a_503s_own_retry_after_is_kept_when_longer_than_the_window(make_app: Callable[..., Flask]) -> None:
    app = make_app(auth_enabled=False)
    app.add_url_rule("/busy", "busy", lambda: ("busy", 503, {"Retry-After": "3600"}))
    reply = app.test_client().get("/busy")

    assert reply.status_code == 503
    assert 3599 <= int(reply.headers["Retry-After"]) <= 3600
    assert reply.headers["X-RateLimit-Limit"] == "50"  # RATELIMIT_DEFAULT's tighter 50 per hour


def test_an_unreachable_redis_falls_back_to_memory_counters(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = make_app(ratelimit_storage_uri=dead, ratelimit_key_status="2 per minute")
    client = app.test_client()
    headers = bearer(keys.create("robot-1").token)

    replies = [client.get("/upload/u1", headers=headers) for _ in range(3)]

    assert [r.status_code for r in replies] == [200, 200, 429]  # still limited, per process
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["1", "0", "0"]
    assert isinstance(app.extensions[core.server.limits.EXTENSION].limiter.storage, SweptMemoryStorage)


@pytest.mark.redis
def test_a_redis_that_comes_back_is_counted_in_again(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    app = make_app(ratelimit_storage_uri=redis.url, ratelimit_key_status="5 per minute")
    client = app.test_client()
    headers = bearer(keys.create("robot-1").token)
    remaining = lambda: client.get("/upload/u1", headers=headers).headers["X-RateLimit-Remaining"]  # noqa: E731

    down = [remaining(), remaining()]  # redis is not running yet: counted in memory
    with redis:
        still_in_memory = remaining()  # redis is asked again only RECHECK_SECONDS later
        clock.sleep(core.server.limits.RECHECK_SECONDS + 1)
        back = [remaining(), remaining()]

    assert down == ["4", "3"]
    assert still_in_memory == "2"
    assert back == ["4", "3"]  # redis's own, fresh counters


@dataclass
class UploadRun:
    """What a client following the project's protocol saw while uploading one file."""

    requests: int = 0
    rate_limited: int = 0
    seconds: float = 0.0


def upload_like_the_project_client(
    client: FlaskClient, headers: dict[str, str], clock: FakeTime, *, file_size: int, link_bytes_per_s: float
) -> UploadRun:
    """init → status (resume check) → every chunk → finalize → poll status each second while finalizing.

    Time advances by each chunk's transfer time on the link; a 429 makes the
    client wait Retry-After and send the same request again, as the project
    client does. Chunk bodies are not sent: limits count requests, not bytes.
    """
    run = UploadRun()
    start = clock.now

    def send(method: str, path: str) -> None:
        while True:
            reply = client.open(path, method=method, json={} if method == "POST" else None, headers=headers)
            run.requests += 1
            if reply.status_code != 429:
                assert reply.status_code < 300, reply.json
                return
            run.rate_limited += 1
            clock.sleep(int(reply.headers["Retry-After"]) or 1)

    chunks = math.ceil(file_size / DEFAULT_CHUNK_SIZE)
    send("POST", "/upload/init")
    send("GET", "/upload/u1")
    for index in range(chunks):
        clock.sleep(DEFAULT_CHUNK_SIZE / link_bytes_per_s)
        send("PUT", f"/upload/u1/chunk/{index}")
    send("POST", "/upload/u1/finalize")
    finalize_seconds = math.ceil(file_size / (190 * 10**6)) * 2  # verify + compress at ~190 MB/s, with margin
    for _ in range(finalize_seconds):
        clock.sleep(1.0)
        send("GET", "/upload/u1")
    run.seconds = clock.now - start
    return run


# 600 chunks/min x 8 MiB = 83.9 MB/s per key: the chunk limit binds only on links faster than that.
CHUNK_LIMIT_THROUGHPUT = 600 * DEFAULT_CHUNK_SIZE / 60


@pytest.mark.parametrize("link_mbit", [2, 20, 100])
def test_5gb_upload_on_a_real_link_never_meets_the_default_limits(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime, link_mbit: int
) -> None:
    client = make_app().test_client()  # the defaults: every RATELIMIT_* unset
    link = link_mbit * 10**6 / 8
    assert link < CHUNK_LIMIT_THROUGHPUT

    run = upload_like_the_project_client(
        client, bearer(keys.create("robot-1").token), clock, file_size=5 * GiB, link_bytes_per_s=link
    )

    assert run.rate_limited == 0
    assert run.requests == 1 + 1 + 640 + 1 + 2 * math.ceil(5 * GiB / (190 * 10**6))


def test_5gb_upload_faster_than_the_chunk_limit_is_paced_not_failed(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime
) -> None:
    client = make_app().test_client()
    gigabit = 125 * 10**6

    run = upload_like_the_project_client(
        client, bearer(keys.create("robot-1").token), clock, file_size=5 * GiB, link_bytes_per_s=gigabit
    )

    assert run.rate_limited > 0
    # 640 chunks at 600 per minute: one full window and part of a second, then ~58 s of finalize polling.
    assert 60 <= run.seconds <= 3 * 60
    assert ServerConfig().ratelimit_key_chunk == "600 per minute"
    assert 5 * GiB / DEFAULT_CHUNK_SIZE == 640
    assert 8 * MiB == DEFAULT_CHUNK_SIZE


def test_the_real_entry_point_limits_without_flask_limiter(tmp_path: Path) -> None:
    """Limits are counted with ``limits`` itself: with flask-limiter (used before) blocked, the 429s still come."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["flask_limiter"] = None  # as if it were not installed
        from upload_server import app
        client = app.test_client()
        print("codes", [client.get("/uploads").status_code for _ in range(7)], client.get("/health").status_code)
        """
    )
    env = {
        **os.environ,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "AUTH_ENABLED": "0",
        "RATELIMIT_ENABLED": "1",
        "RATELIMIT_LIST": "5 per minute",
        "BACKGROUND_JOBS": "0",
    }
    done = subprocess.run([PYTHON, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert f"codes {[200] * 5 + [429] * 2} 200" in done.stdout


@pytest.mark.parametrize(
    ("method", "path", "per_key", "per_address"),
    [
        ("POST", "/upload/init", "60", "20"),
        ("PUT", "/upload/nope/chunk/0", "600", "100"),
        ("GET", "/upload/nope", "600", "300"),
        ("POST", "/upload/nope/finalize", "60", "60"),  # per key 60/minute, per address the seed-derived 60/hour
        ("GET", "/uploads", "120", "120"),
        ("POST", "/robots/robot-1/heartbeat", "120", "120"),
        ("DELETE", "/upload/nope", "120", "50"),  # RATELIMIT_DEFAULT: the tighter 50/hour is the one reported
        ("GET", "/uploads/nope/file", "120", "50"),
        ("POST", "/files/", "60", "20"),  # tus creation counts like an init,
        ("PATCH", "/files/nope", "600", "100"),  # a PATCH like a chunk,
        ("HEAD", "/files/nope", "600", "300"),  # a HEAD like a status request
    ],
)
def test_the_real_app_gives_each_upload_route_its_own_limit(
    tmp_path: Path, method: str, path: str, per_key: str, per_address: str
) -> None:
    settings = {"upload_dir": tmp_path / "uploads", "background_jobs": False}
    token = key_store_for(tmp_path / "uploads").create("robot-1").token
    with_key = create_app(settings).test_client().open(path, method=method, json={}, headers=bearer(token))
    keyless = create_app({**settings, "auth_enabled": False}).test_client().open(path, method=method, json={})

    assert with_key.status_code != 429
    assert with_key.headers["X-RateLimit-Limit"] == per_key
    assert keyless.headers["X-RateLimit-Limit"] == per_address


def record_continuously(
    client: FlaskClient, headers: dict[str, str], clock: FakeTime, *, split_seconds: float, hours: float
) -> UploadRun:
    """A recorder splitting every ``split_seconds``: each split uploads its storage file and its metadata.yaml."""
    total = UploadRun()
    start = clock.now
    while clock.now - start < hours * 3600:
        split_start = clock.now
        for size in (20 * MiB, 2 * 1024):  # a small bag file, then metadata.yaml
            run = upload_like_the_project_client(client, headers, clock, file_size=size, link_bytes_per_s=10**7)
            total.requests += run.requests
            total.rate_limited += run.rate_limited
        clock.now = max(clock.now, split_start + split_seconds)
    total.seconds = clock.now - start
    return total


@pytest.mark.parametrize(
    ("split_seconds", "hours"),
    [
        (RecorderConfig().max_bag_duration, 26.0),  # the recorder's RECORDER_MAX_BAG_DURATION, a day+
        (10.0, 3.0),  # the demo's DEMO_SPLIT_SECONDS: every per-minute and per-hour window many times over
    ],
)
def test_a_robot_recording_continuously_on_the_defaults_never_meets_a_429(
    make_app: Callable[..., Flask], keys: KeyStore, clock: FakeTime, split_seconds: float, hours: float
) -> None:
    client = make_app().test_client()  # every RATELIMIT_* at its default

    run = record_continuously(
        client, bearer(keys.create("robot-1").token), clock, split_seconds=split_seconds, hours=hours
    )

    assert run.rate_limited == 0
    assert run.requests >= 2 * 5 * hours * 3600 / split_seconds  # init, status, chunk, finalize, poll per upload


@pytest.mark.parametrize("setting", ["ratelimit_key_init", "ratelimit_default"])
def test_a_limit_that_does_not_parse_stops_the_start_naming_the_variable(
    make_app: Callable[..., Flask], setting: str
) -> None:
    env = ServerConfig.__dataclass_fields__[setting].metadata["env"]
    with pytest.raises(ConfigError, match=env):
        make_app(**{setting: "lots per fortnight"})
