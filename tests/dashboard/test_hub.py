"""The shared snapshot: one read of the sources per tick per process for every viewer, and the stream cap."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from core.server.keys import key_store
from dashboard import views
from dashboard.hub import SnapshotHub
from dashboard.snapshot import UploadFilter
from tests.dashboard.conftest import bearer, heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def document(sources: Any, flt: UploadFilter) -> dict[str, Any]:
    return {"server_time": 0, "server": {"storage": {}}, "sources": sources, "robot": flt.robot}


def counting_hub(clock: Clock, **options: Any) -> tuple[SnapshotHub, list[int]]:
    reads: list[int] = []

    def load() -> int:
        reads.append(1)
        return len(reads)

    return SnapshotHub(load, document, interval=1.0, max_streams=options.get("max_streams", 2), clock=clock), reads


def test_every_viewer_in_a_tick_shares_one_read_and_one_document() -> None:
    clock = Clock()
    hub, reads = counting_hub(clock)

    first = [hub.snapshot(UploadFilter()) for _ in range(50)]
    other_filter = hub.snapshot(UploadFilter(robot="robot-1"))

    assert len(reads) == 1
    assert all(s is first[0] for s in first)
    assert other_filter.document["sources"] == 1
    assert other_filter.document["robot"] == "robot-1"


def test_the_next_tick_reads_again() -> None:
    clock = Clock()
    hub, reads = counting_hub(clock)
    before = hub.snapshot(UploadFilter())

    clock.now += 0.99
    assert hub.snapshot(UploadFilter()) is before
    clock.now += 0.01
    after = hub.snapshot(UploadFilter())

    assert len(reads) == 2
    assert after.generation == before.generation + 1
    assert after.document["sources"] == 2


def test_concurrent_viewers_wait_for_one_read_instead_of_each_reading() -> None:
    clock = Clock()
    release = threading.Event()
    reads: list[int] = []

    def slow_load() -> int:
        reads.append(1)
        release.wait(5)
        return 1

    hub = SnapshotHub(slow_load, document, interval=1.0, max_streams=2, clock=clock)
    threads = [threading.Thread(target=hub.snapshot, args=(UploadFilter(),)) for _ in range(16)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)

    assert len(reads) == 1


def test_streams_over_the_cap_are_refused_until_one_closes() -> None:
    hub, _ = counting_hub(Clock(), max_streams=2)

    assert [hub.try_open() for _ in range(3)] == [True, True, False]
    hub.close()

    assert hub.try_open() is True
    assert hub.open_streams == 2


@pytest.fixture
def capped_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(sse_max_streams=0, sse_max_seconds=0.5, sse_interval=0.1, background_jobs=False)


@pytest.fixture
def keys_for() -> Callable[[Flask], tuple[str, str]]:
    def create(app: Flask) -> tuple[str, str]:
        store = key_store(app)
        return store.create("ops", admin=True).token, store.create("robot-1").token

    return create


def test_a_stream_over_the_cap_tells_the_page_to_poll(capped_app: Flask, keys_for: Any) -> None:
    admin_key, _ = keys_for(capped_app)
    reply = capped_app.test_client().get("/dashboard/events", headers=bearer(admin_key))

    body = reply.get_data(as_text=True)
    assert reply.status_code == 200
    assert "event: poll" in body
    assert '"retry_seconds": 30' in body
    assert "event: state" not in body


def test_live_polling_shares_the_processs_snapshot(make_app: Callable[..., Flask], keys_for: Any) -> None:
    app = make_app(sse_interval=3600.0, background_jobs=False)  # one tick for the whole test
    client = app.test_client()
    admin_key, robot_key = keys_for(app)
    hub: SnapshotHub = app.extensions[views.HUB_EXTENSION]
    heartbeat(client, "robot-1", robot_key, recorder={"state": "recording"})
    for _ in range(10):
        reply = client.get("/dashboard/api/state?live=1", headers=bearer(admin_key))
        assert reply.status_code == 200
        assert [r["robot_id"] for r in reply.get_json()["fleet"]] == ["robot-1"]

    assert hub.loads == 1
