"""The StateStore contract: compare-and-set transitions, exclusive job claims and leases across processes."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.protocol import Codec, UploadState
from core.server.state_store import SQLiteStateStore, StateStore, UploadQuery, UploadRecord

NOW = 1_000.0


@pytest.fixture(params=["sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """Open one store; calling it twice gives a second handle on the same data (another worker process)."""
    stores: list[StateStore] = []

    def open_() -> StateStore:
        store = SQLiteStateStore(tmp_path / "state.sqlite3")
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def record(upload_id: str = "a" * 32, **fields: object) -> UploadRecord:
    values: dict[str, object] = {
        "upload_id": upload_id,
        "owner": "robot1",
        "filename": "x.bag",
        "filesize": 10,
        "chunk_size": 10,
        "chunks": 1,
        "created_at": NOW,
        "updated_at": NOW,
        "compression": Codec.ZSTD,
        "metadata": {"k": [1, 2]},
        **fields,
    }
    return UploadRecord(**values)  # type: ignore[arg-type]


def test_record_round_trips(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record())

    assert store.get_upload("a" * 32) == record()


def test_transition_is_compare_and_set_across_handles(open_store: Callable[[], StateStore]) -> None:
    first, second = open_store(), open_store()
    first.create_upload(record())

    won = first.start_finalize("a" * 32, NOW)
    lost = second.start_finalize("a" * 32, NOW)

    assert won is not None
    assert won.state is UploadState.FINALIZING
    assert lost is None


def test_transition_rejects_unknown_fields(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record())

    with pytest.raises(ValueError, match="owner"):
        store.transition("a" * 32, (UploadState.UPLOADING,), NOW, owner="someone-else")


def test_chunks_are_recorded_only_while_uploading(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record(chunks=2, filesize=20))

    assert store.record_chunk("a" * 32, 0, "d0", NOW) == 1
    store.transition("a" * 32, (UploadState.UPLOADING,), NOW, state=UploadState.ABORTED)
    assert store.record_chunk("a" * 32, 1, "d1", NOW) is None
    assert store.received_chunks("a" * 32) == {0: "d0"}


def test_a_job_is_claimed_by_one_worker_until_its_lease_ends(open_store: Callable[[], StateStore]) -> None:
    first, second = open_store(), open_store()
    first.create_upload(record())
    first.start_finalize("a" * 32, NOW)

    assert first.claim_job("w1", NOW, 30) == ("a" * 32, 1)
    assert second.claim_job("w2", NOW + 10, 30) is None
    assert first.renew_job("a" * 32, "w1", NOW + 60)
    assert second.claim_job("w2", NOW + 45, 30) is None
    assert second.claim_job("w2", NOW + 61, 30) == ("a" * 32, 2)
    assert not first.renew_job("a" * 32, "w1", NOW + 100)


def test_lease_is_exclusive_until_it_expires(open_store: Callable[[], StateStore]) -> None:
    first, second = open_store(), open_store()

    assert first.acquire_lease("sweep", "w1", NOW, NOW + 60)
    assert not second.acquire_lease("sweep", "w2", NOW + 30, NOW + 90)
    assert second.acquire_lease("sweep", "w2", NOW + 60, NOW + 120)


def test_listing_pages_newest_first(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    for n in range(5):
        store.create_upload(record(f"{n:032x}", created_at=NOW + n, owner="r1" if n % 2 else "r2"))

    page, total = store.list_uploads(UploadQuery(owner="r2", limit=2, offset=0))

    assert total == 3
    assert [r.upload_id for r in page] == [f"{4:032x}", f"{2:032x}"]


def test_a_full_database_is_reported_as_disk_full(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record())
    # Freeze the database at its current size (sqlite-specific: this is how "disk full" looks to SQLite).
    db = store._connection()  # type: ignore[attr-defined]
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")

    def fill() -> None:
        for n in range(1, 200):
            store.create_upload(record(f"{n:032x}", metadata={"pad": "x" * 2000}))

    with pytest.raises(OSError, match="state database") as caught:
        fill()

    assert caught.value.errno == errno.ENOSPC
    assert store.get_upload("a" * 32) == record()
