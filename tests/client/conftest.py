"""Fixtures of the upload client tests: fake time, test files, managers, and a real upload server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.network_manager import NetworkManager
from core.protocol import KiB
from tests.client.support import EventLog, FakeClock, write_file
from tests.helpers.servers import GunicornServer

SMALL_CHUNK = 256 * KiB


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))
    folder = tmp_path / "bags"
    folder.mkdir()

    def make(size: int, *, name: str | None = None, compressible: bool = False) -> Path:
        return write_file(folder / (name or f"bag_{next(counter):04d}.mcap"), size, compressible=compressible)

    return make


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One real gunicorn per test module (2 workers: this machine has 2 cores)."""
    root = tmp_path_factory.mktemp("server")
    with GunicornServer(root / "uploads", workers=2) as srv:
        yield srv


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def make_manager(tmp_path: Path, events: EventLog) -> Iterator[Callable[..., NetworkManager]]:
    """Managers with fast retry timing and their journal in tmp_path; closed at teardown."""
    managers: list[NetworkManager] = []

    def make(upload_url: str, **kwargs: Any) -> NetworkManager:
        kwargs.setdefault("state_dir", tmp_path / "state")
        kwargs.setdefault("chunk_size", SMALL_CHUNK)
        manager = NetworkManager(upload_url=upload_url, **kwargs)
        manager.backoff_initial = 0.05
        manager.backoff_max = 0.5
        manager.park_delay = 0.5
        # A restarting server on a loaded machine may take many seconds; keep parked retries frequent.
        manager.max_park_delay = 2.0
        manager.add_listener(events)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()
