"""memory:// rate-limit counters: no thread per request, and expired counters still leave memory."""

from __future__ import annotations

import threading
from collections.abc import Callable

import limits.storage.memory
import pytest
from flask import Flask

from core.server import limit_storage
from core.server.keys import KeyStore
from core.server.limits import EXTENSION
from tests.protection.conftest import bearer
from tests.protection.test_limits import FakeTime, clock  # noqa: F401 - the clock fixture


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads code asks to start; none is started, so a 'still alive?' check never saves one."""
    started: list[str] = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name))
    return started


def test_rate_limited_requests_start_no_thread(
    make_app: Callable[..., Flask], keys: KeyStore, thread_starts: list[str]
) -> None:
    client = make_app(ratelimit_storage_uri="memory://").test_client()
    headers = bearer(keys.create("robot-1").token)
    thread_starts.clear()  # start-up may start threads (the storages' first Timers): requests may not

    replies = [client.get("/upload/some-id", headers=headers) for _ in range(20)]

    assert [r.status_code for r in replies] == [200] * 20
    assert int(replies[-1].headers["X-RateLimit-Remaining"]) < int(replies[0].headers["X-RateLimit-Remaining"])
    assert thread_starts == []


def test_plain_memory_storage_starts_a_thread_per_update(thread_starts: list[str]) -> None:
    """Why limit_storage exists: limits' own MemoryStorage (reproduces the per-request Timer)."""
    storage = limits.storage.memory.MemoryStorage()
    thread_starts.clear()  # the constructor's own Timer

    for _ in range(5):
        storage.incr("key", 60)

    assert len(thread_starts) == 5


def test_expired_counters_are_swept_without_a_thread(
    clock: FakeTime,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    thread_starts: list[str],
) -> None:
    monkeypatch.setattr(limit_storage, "time", clock)
    storage = limit_storage.SweptMemoryStorage()
    thread_starts.clear()  # the base constructor's Timer, cancelled at once
    for client in ("a", "b", "c"):
        storage.incr(client, 60)

    clock.sleep(61)
    storage.incr("d", 60)

    assert set(storage.storage) == {"d"}
    assert thread_starts == []


@pytest.mark.parametrize(
    ("configured", "expected"),
    [("memory://", "upload-memory://"), ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0")],
)
def test_only_memory_storage_is_replaced(configured: str, expected: str) -> None:
    assert limit_storage.storage_uri(configured) == expected


def test_the_app_counts_in_the_swept_storage(make_app: Callable[..., Flask]) -> None:
    app = make_app(ratelimit_storage_uri="memory://")

    assert isinstance(app.extensions[EXTENSION].storage, limit_storage.SweptMemoryStorage)
