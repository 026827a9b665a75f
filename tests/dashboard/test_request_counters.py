"""The dashboard's request counters: summed over workers and hosts, in SQLite (one host) or PostgreSQL (several)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

from core.config import ServerConfig
from core.protocol import HEALTH_PATH, UPLOAD_PREFIX
from core.server import db
from core.server.app import close_app
from dashboard import views
from dashboard.metrics import (
    BUCKET_SECONDS,
    KEEP_SECONDS,
    CounterStore,
    Counts,
    RequestMetrics,
    SQLCounters,
    open_request_metrics,
)
from tests.dashboard.conftest import build_app
from tests.helpers.postgres import PostgresServer
from tests.helpers.state import open_engine

STATE = "/dashboard/api/state"


class Clock:
    """Wall-clock-based time the test moves by hand."""

    def __init__(self) -> None:
        self.now = float(int(time.time()) // BUCKET_SECONDS * BUCKET_SECONDS)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_metrics(state_store_uri: str, tmp_path: Path, clock: Clock) -> Iterator[Callable[[], RequestMetrics]]:
    """Request counters on the shared store of one engine, opened again as another worker or host would."""
    opened: list[RequestMetrics] = []

    def open_() -> RequestMetrics:
        opened.append(RequestMetrics(SQLCounters(open_engine(tmp_path, state_store_uri)), clock=clock))
        return opened[-1]

    yield open_
    for metrics in opened:  # the flusher thread first: it may hold a connection of the engine
        metrics.close()
        metrics.store.engine.dispose()  # type: ignore[attr-defined]


def test_buckets_are_summed_across_workers(open_metrics: Callable[[], RequestMetrics], clock: Clock) -> None:
    first, second = open_metrics(), open_metrics()
    first.record(200, 100)
    second.record(429, 50)
    clock.now += BUCKET_SECONDS
    second.record(201, 1000)
    second.record(500, 7)
    first.flush()

    series = second.series(window=60)

    assert (series["requests"], series["rate_limited"], series["errors"]) == (4, 1, 1)
    assert [p["bytes_in"] for p in series["points"]][-2:] == [100, 1000]
    assert [p["t"] for p in series["points"]][-1] == clock.now


def test_series_is_zero_filled_oldest_first_and_ends_at_the_window(
    open_metrics: Callable[[], RequestMetrics], clock: Clock
) -> None:
    metrics = open_metrics()
    metrics.record(200, 1)
    clock.now += 60

    series = metrics.series(window=60)

    assert len(series["points"]) == 60 // BUCKET_SECONDS
    assert [p["t"] for p in series["points"]] == sorted(p["t"] for p in series["points"])
    assert series["requests"] == 0  # the request fell out of the window
    assert all(p["requests"] == p["bytes_in"] == 0 for p in series["points"])
    assert metrics.series(window=70)["requests"] == 1


def test_buckets_older_than_an_hour_are_forgotten(open_metrics: Callable[[], RequestMetrics], clock: Clock) -> None:
    metrics = open_metrics()
    store = metrics.store
    old = clock.now
    metrics.record(200, 10)
    metrics.flush()
    clock.now += KEEP_SECONDS + BUCKET_SECONDS
    metrics.record(200, 10)
    metrics.flush()

    assert store.read([old]) == {}
    assert store.read([clock.now])[int(clock.now)].requests == 1


def test_a_failing_store_does_not_stop_the_flusher(clock: Clock) -> None:
    class Flaky(CounterStore):
        errors = (OperationalError,)

        def __init__(self) -> None:
            self.saved: list[int] = []
            self.failures = 1

        def add(self, deltas: Any, now: float) -> None:
            if self.failures:
                self.failures -= 1
                raise OperationalError("INSERT", {}, OSError("the database is away"))
            self.saved.extend(c.requests for c in deltas.values())

        def read(self, buckets: Any) -> dict[int, Any]:
            return {}

    store = Flaky()
    metrics = RequestMetrics(store, flush_every=0.01, clock=clock)
    metrics.record(200, 1)  # starts the flusher; its first flush fails
    deadline = time.monotonic() + 10
    while store.failures and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics.record(200, 1)
    while not store.saved and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics.close()

    assert store.saved == [1]


def test_the_series_is_read_when_the_pending_counts_cannot_be_saved(clock: Clock) -> None:
    """A full disk fails the flush; the dashboard that shows the disk is full must still load."""

    class Full(CounterStore):
        errors = (OperationalError,)

        def add(self, deltas: Any, now: float) -> None:
            raise OperationalError("INSERT", {}, OSError(28, "database or disk is full"))

        def read(self, buckets: Any) -> dict[int, Any]:
            return {int(clock()) // BUCKET_SECONDS * BUCKET_SECONDS: Counts(requests=7)}

    metrics = RequestMetrics(Full(), flush_every=3600, clock=clock)
    metrics.record(200, 1)

    series = metrics.series(window=60)
    metrics.close()

    assert sum(point["requests"] for point in series["points"]) == 7


def test_close_waits_for_a_flush_in_progress(clock: Clock) -> None:
    """The caller disposes the engine right after close(): a flush still running would lose its connection."""

    class Slow(CounterStore):
        errors = (OperationalError,)

        def __init__(self) -> None:
            self.started, self.finished = threading.Event(), threading.Event()

        def add(self, deltas: Any, now: float) -> None:
            self.started.set()
            time.sleep(0.3)
            self.finished.set()

        def read(self, buckets: Any) -> dict[int, Any]:
            return {}

    store = Slow()
    metrics = RequestMetrics(store, flush_every=0.01, clock=clock)
    metrics.record(200, 1)
    assert store.started.wait(10)

    metrics.close()

    assert store.finished.is_set()


def test_open_request_metrics_follows_state_store_uri(tmp_path: Path, state_store_uri: str) -> None:
    metrics = open_request_metrics(ServerConfig(upload_dir=tmp_path / "root", state_store_uri=state_store_uri))

    assert isinstance(metrics.store, SQLCounters)
    assert metrics.store.engine.dialect.name == ("postgresql" if state_store_uri else "sqlite")
    assert (tmp_path / "root" / db.STATE_FILE).exists() == (not state_store_uri)
    metrics.store.engine.dispose()


def dashboard_requests(app: Flask) -> dict[str, Any]:
    reply = app.test_client().get(STATE)
    assert reply.status_code == 200, reply.text
    counts: dict[str, Any] = reply.json["server"]["requests"]
    return counts


@pytest.mark.postgres
def test_two_hosts_sharing_postgresql_show_each_others_requests(tmp_path: Path, postgres: PostgresServer) -> None:
    """Two app servers with separate disks (like two hosts) and one PostgreSQL: each dashboard counts both."""
    url = postgres.create_database()
    hosts = [
        build_app(tmp_path / name, auth_enabled=False, ratelimit_enabled=False, state_store_uri=url)
        for name in ("host-a", "host-b")
    ]
    for _ in range(3):
        hosts[0].test_client().get(HEALTH_PATH)
    hosts[1].test_client().get(f"{UPLOAD_PREFIX}/no-such-upload")
    for app in hosts:
        app.extensions[views.METRICS_EXTENSION].flush()

    assert [dashboard_requests(app)["requests"] for app in hosts] == [4, 4]
    assert [p.name for p in tmp_path.rglob("*.sqlite3*")] == []  # no keys, robots, state or counters on disk
    for app in hosts:
        close_app(app)
