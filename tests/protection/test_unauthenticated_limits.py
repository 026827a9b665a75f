"""Requests without a valid key are counted per client address; over RATELIMIT_UNAUTHENTICATED they get a JSON 429."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from limits import parse

from core.config import ConfigError, ServerConfig
from core.server.keys import KeyStore
from tests.protection.conftest import bearer

BUDGET = "3 per hour"
NO_KEY: dict[str, str] = {}
CREDENTIALS = {
    "no key": NO_KEY,
    "unknown bearer key": bearer("not-a-key"),
    "unknown X-API-Key": {"X-API-Key": "not-a-key"},
    "empty bearer": {"Authorization": "Bearer "},
}


@pytest.fixture
def throttled_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(ratelimit_unauthenticated=BUDGET)


@pytest.mark.parametrize("headers", CREDENTIALS.values(), ids=CREDENTIALS.keys())
def test_the_budget_of_401s_is_followed_by_json_429s(throttled_app: Flask, headers: dict[str, str]) -> None:
    client = throttled_app.test_client()

    replies = [client.post("/upload/init", json={}, headers=headers) for _ in range(5)]

    assert [r.status_code for r in replies] == [401, 401, 401, 429, 429]
    limited = replies[3]
    assert limited.json["success"] is False
    assert limited.json["error"]["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) > 0


def test_each_401_says_how_many_failures_are_left(throttled_app: Flask) -> None:
    client = throttled_app.test_client()

    replies = [client.get("/uploads") for _ in range(3)]

    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["2", "1", "0"]
    assert all(r.json["error"]["code"] == "unauthorized" for r in replies)
    assert all(r.headers["WWW-Authenticate"].startswith("Bearer") for r in replies)


def test_failures_on_every_keyed_route_share_one_budget(throttled_app: Flask) -> None:
    client = throttled_app.test_client()

    codes = [
        client.post("/upload/init", json={}).status_code,
        client.get("/uploads").status_code,
        client.put("/upload/u1/chunk/0", data=b"x").status_code,
        client.delete("/upload/u1").status_code,
    ]

    assert codes == [401, 401, 401, 429]


def test_a_valid_key_from_a_throttled_address_is_still_served(throttled_app: Flask, keys: KeyStore) -> None:
    client = throttled_app.test_client()
    robot = bearer(keys.create("robot-1").token)
    for _ in range(4):
        client.post("/upload/init", json={})

    served = client.post("/upload/init", json={}, headers=robot)

    assert served.status_code == 201
    assert served.json["name"] == "robot-1"
    # Its headers are its own key's init budget, not the address's failure budget.
    assert served.headers["X-RateLimit-Limit"] == str(parse(ServerConfig().ratelimit_key_init).amount)


def test_authenticated_requests_do_not_spend_the_failure_budget(throttled_app: Flask, keys: KeyStore) -> None:
    client = throttled_app.test_client()
    robot = bearer(keys.create("robot-1").token)

    codes = []
    for _ in range(4):
        codes.append(client.get("/uploads", headers=robot).status_code)
        codes.append(client.get("/uploads").status_code)

    assert codes == [200, 401, 200, 401, 200, 401, 200, 429]


def test_public_routes_are_never_counted(throttled_app: Flask) -> None:
    client = throttled_app.test_client()

    health = {client.get("/health").status_code for _ in range(10)}
    codes = [client.get("/uploads").status_code for _ in range(4)]

    assert health == {200}
    assert codes == [401, 401, 401, 429]


def test_addresses_behind_a_trusted_proxy_have_their_own_budgets(make_app: Callable[..., Flask]) -> None:
    client = make_app(ratelimit_unauthenticated=BUDGET, trusted_proxies=("127.0.0.1",)).test_client()

    def from_address(address: str) -> list[int]:
        return [client.get("/uploads", headers={"X-Forwarded-For": address}).status_code for _ in range(4)]

    assert from_address("203.0.113.7") == [401, 401, 401, 429]
    assert from_address("198.51.100.9") == [401, 401, 401, 429]


def test_a_forged_forwarded_address_does_not_buy_a_fresh_budget(throttled_app: Flask) -> None:
    client = throttled_app.test_client()

    codes = [client.get("/uploads", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(4)]

    assert codes == [401, 401, 401, 429]


def test_rate_limits_off_leaves_every_failure_a_401(make_app: Callable[..., Flask]) -> None:
    client = make_app(ratelimit_unauthenticated=BUDGET, ratelimit_enabled=False).test_client()

    assert {client.get("/uploads").status_code for _ in range(6)} == {401}


def test_a_malformed_budget_is_a_config_error_naming_the_variable(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="RATELIMIT_UNAUTHENTICATED"):
        make_app(ratelimit_unauthenticated="lots")
