"""The Redis state store passes the same StateStore contract as SQLite, against a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from core.config import ServerConfig
from core.protocol import UploadState
from core.server.redis_store import RedisStateStore, open_state_store
from core.server.state_store import SQLiteStateStore, StateStore, UploadQuery
from tests.helpers.redis_server import RedisServer
from tests.server import test_state_store as contract

pytestmark = pytest.mark.redis

# Every contract test of tests/server/test_state_store.py, run here with `open_store` opening Redis,
# except those that drive SQLite itself (how a full disk looks to SQLite).
SQLITE_ONLY = {"test_a_full_database_is_reported_as_disk_full"}
globals().update(
    {name: test for name, test in vars(contract).items() if name.startswith("test_") and name not in SQLITE_ONLY}
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def open_store(redis_server: RedisServer) -> Iterator[Callable[[], StateStore]]:
    """Each call is another handle (another worker or host) on the same keys; each test has its own prefix."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    stores: list[StateStore] = []

    def open_() -> StateStore:
        store = RedisStateStore(redis.Redis.from_url(redis_server.url), prefix=prefix)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def test_state_store_uri_selects_redis_and_sqlite_stays_the_default(redis_server: RedisServer, tmp_path: Path) -> None:
    default = open_state_store(ServerConfig(upload_dir=tmp_path), tmp_path / "state.sqlite3")
    shared = open_state_store(ServerConfig(state_store_uri=redis_server.url), tmp_path / "unused.sqlite3")
    assert isinstance(default, SQLiteStateStore)
    assert isinstance(shared, RedisStateStore)
    assert not (tmp_path / "unused.sqlite3").exists()
    default.close()
    shared.close()


def test_state_index_follows_transitions(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(contract.record("a" * 32, metadata={"empty": [], "nested": {"k": []}}))
    store.create_upload(contract.record("b" * 32, created_at=contract.NOW + 1))
    store.start_finalize("a" * 32, contract.NOW + 2)
    done = store.transition("a" * 32, (UploadState.FINALIZING,), contract.NOW + 3, state=UploadState.COMPLETE)

    assert done is not None
    assert done.metadata == {"empty": [], "nested": {"k": []}}
    assert [r.upload_id for r in store.list_uploads(UploadQuery(state=UploadState.COMPLETE))[0]] == ["a" * 32]
    assert store.list_uploads(UploadQuery(state=UploadState.UPLOADING))[1] == 1
    assert store.list_uploads(UploadQuery(owner="robot1", state=UploadState.UPLOADING))[1] == 1


def test_stale_uploads_are_those_idle_while_uploading(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(contract.record("a" * 32))
    store.create_upload(contract.record("b" * 32))
    store.record_chunk("b" * 32, 0, "0" * 64, contract.NOW + 100)
    store.create_upload(contract.record("c" * 32))
    store.start_finalize("c" * 32, contract.NOW)

    assert [r.upload_id for r in store.stale_uploads(contract.NOW + 50)] == ["a" * 32]


def test_resumable_and_duplicate_lookups(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(contract.record("a" * 32, sha256="f" * 64, md5="e" * 32))
    spec = {"owner": "robot1", "filename": "x.bag", "filesize": 10, "chunk_size": 10, "md5": "e" * 32}
    found = store.find_resumable(**spec, sha256="f" * 64)  # type: ignore[arg-type]
    assert found is not None
    assert found.upload_id == "a" * 32
    assert store.find_duplicate(filesize=10, md5=None, sha256="f" * 64, owner=None) is None  # not complete yet

    store.start_finalize("a" * 32, contract.NOW)
    store.transition("a" * 32, (UploadState.FINALIZING,), contract.NOW, state=UploadState.COMPLETE, verified=True)

    assert store.find_resumable(**spec, sha256="f" * 64) is None  # type: ignore[arg-type]
    duplicate = store.find_duplicate(filesize=10, md5="e" * 32, sha256=None, owner="robot1")
    assert duplicate is not None
    assert duplicate.upload_id == "a" * 32
    assert store.find_duplicate(filesize=10, md5=None, sha256="f" * 64, owner="robot2") is None
