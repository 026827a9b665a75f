"""Wrong or missing keys on the dashboard's JSON routes spend the same per-address budget as on the API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from core.server.keys import key_store

BUDGET = 5
ROUTES = {
    "state": ("GET", "/dashboard/api/state"),
    "events": ("GET", "/dashboard/events"),
    "command": ("POST", "/dashboard/api/robots/robot-1/commands"),
}
WRONG_KEY = {"Authorization": "Bearer not-a-key"}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(ratelimit_enabled=True, ratelimit_unauthenticated=f"{BUDGET} per hour")


@pytest.mark.parametrize(("method", "path"), ROUTES.values(), ids=ROUTES.keys())
@pytest.mark.parametrize("headers", [WRONG_KEY, {}], ids=["wrong key", "no key"])
def test_fifty_refused_dashboard_requests_are_cut_after_the_budget(
    app: Flask, method: str, path: str, headers: dict[str, str]
) -> None:
    client = app.test_client()

    replies = [client.open(path, method=method, headers=headers, json={"action": "pause"}) for _ in range(50)]

    assert [r.status_code for r in replies] == [401] * BUDGET + [429] * (50 - BUDGET)
    assert replies[-1].json["error"]["code"] == "rate_limited"
    assert int(replies[-1].headers["Retry-After"]) > 0


def test_the_dashboard_and_the_api_share_one_budget(app: Flask) -> None:
    client = app.test_client()

    codes = [client.get("/uploads", headers=WRONG_KEY).status_code for _ in range(3)]
    codes += [client.get("/dashboard/api/state", headers=WRONG_KEY).status_code for _ in range(3)]

    assert codes == [401, 401, 401, 401, 401, 429]


def test_an_admin_key_from_a_throttled_address_still_sees_the_dashboard(app: Flask) -> None:
    client = app.test_client()
    admin = key_store(app).create("admin", admin=True).token
    for _ in range(BUDGET + 1):
        client.get("/dashboard/api/state", headers=WRONG_KEY)

    reply = client.get("/dashboard/api/state", headers={"Authorization": f"Bearer {admin}"})

    assert reply.status_code == 200, reply.json
