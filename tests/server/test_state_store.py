"""The StateStore contract on both engines (SQLite and a real PostgreSQL): compare-and-set transitions,
fenced job claims, leases on the database clock, across several handles (= worker processes or hosts)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from core.protocol import Codec, UploadState
from core.server import db
from core.server.state_store import SQLStateStore, StateStore, UploadQuery, UploadRecord
from tests.helpers.state import open_engine, pass_database_time

NOW = 1_000.0


@pytest.fixture
def open_store(state_store_uri: str, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """Open one store; calling it twice gives a second handle on the same data (another worker process)."""
    stores: list[StateStore] = []

    def open_() -> StateStore:
        store = SQLStateStore(open_engine(tmp_path, state_store_uri))
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

    assert first.claim_job("w1", 30) == ("a" * 32, 1)
    assert second.claim_job("w2", 30) is None
    pass_database_time(first, 20)
    assert first.renew_job("a" * 32, 1, 30)
    pass_database_time(first, 20)
    assert second.claim_job("w2", 30) is None  # renewed: 10 s left
    pass_database_time(first, 11)
    assert second.claim_job("w2", 30) == ("a" * 32, 2)
    assert not first.renew_job("a" * 32, 1, 30)


def test_a_stale_attempt_changes_and_deletes_nothing(open_store: Callable[[], StateStore]) -> None:
    first, second = open_store(), open_store()
    first.create_upload(record())
    first.start_finalize("a" * 32, NOW)
    first.claim_job("w1", 30)
    pass_database_time(first, 31)
    assert second.claim_job("w2", 30) == ("a" * 32, 2)

    assert first.transition("a" * 32, (UploadState.FINALIZING,), NOW, fence=1, progress=5) is None
    assert first.finish_attempt("a" * 32, 1, NOW, (UploadState.FINALIZING,), state=UploadState.FAILED) is None
    assert not first.release_job("a" * 32, 1, 0)
    assert not first.finish_job("a" * 32, 1)
    assert first.job_attempt("a" * 32) == 2
    assert first.get_upload("a" * 32).state is UploadState.FINALIZING  # type: ignore[union-attr]

    done = second.finish_attempt("a" * 32, 2, NOW + 1, (UploadState.FINALIZING,), state=UploadState.COMPLETE)
    assert done is not None
    assert done.state is UploadState.COMPLETE
    assert second.job_attempt("a" * 32) is None  # finished in the same transaction


def test_a_released_job_is_due_again_after_its_delay(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record())
    store.start_finalize("a" * 32, NOW)
    store.claim_job("w1", 30)

    assert store.release_job("a" * 32, 1, 60)
    assert store.claim_job("w1", 30) is None
    pass_database_time(store, 61)
    assert store.claim_job("w1", 30) == ("a" * 32, 2)


def test_the_sweep_transition_rechecks_the_idle_time(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record())
    listed = store.stale_uploads(NOW + 100)
    store.record_chunk("a" * 32, 0, "d0", NOW + 200)  # a chunk arrives after the sweep listed the upload

    expired = store.transition(
        listed[0].upload_id, (UploadState.UPLOADING,), NOW + 200, idle_before=NOW + 100, state=UploadState.ABORTED
    )

    assert expired is None
    assert store.get_upload("a" * 32).state is UploadState.UPLOADING  # type: ignore[union-attr]


def test_duplicates_are_listed_oldest_first_and_only_when_verified(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    for n, verified in ((1, True), (2, False), (3, True)):
        store.create_upload(
            record(f"{n:032x}", sha256="s", state=UploadState.COMPLETE, verified=verified, created_at=NOW + n)
        )

    found = store.find_duplicates(filesize=10, md5=None, sha256="s", owner=None)

    assert [r.upload_id for r in found] == [f"{1:032x}", f"{3:032x}"]


def test_a_fingerprint_finds_verified_copies_of_the_same_size_and_the_upload_to_resume(
    open_store: Callable[[], StateStore],
) -> None:
    store = open_store()
    store.create_upload(record("1" * 32, fingerprint="f", sha256="s", state=UploadState.COMPLETE, verified=True))
    store.create_upload(record("2" * 32, fingerprint="f", filesize=11, state=UploadState.COMPLETE, verified=True))
    store.create_upload(record("3" * 32, fingerprint="f"))  # uploading, no checksum declared

    found = store.find_duplicates(filesize=10, md5=None, sha256=None, owner="robot1", fingerprint="f")
    resumed = store.find_resumable(
        owner="robot1", filename="x.bag", filesize=10, chunk_size=10, md5=None, sha256=None, fingerprint="f"
    )

    assert [r.upload_id for r in found] == ["1" * 32]
    assert resumed is not None
    assert resumed.upload_id == "3" * 32
    assert resumed.fingerprint == "f"


def test_an_upload_and_its_receipts_are_read_together(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    store.create_upload(record(chunks=2, chunk_size=5))
    store.record_chunk("a" * 32, 1, "d" * 64, NOW)

    found, receipts = store.get_upload_with_receipts("a" * 32)

    assert found == store.get_upload("a" * 32)
    assert receipts == {1: "d" * 64}
    assert store.get_upload_with_receipts("b" * 32) == (None, {})


def test_lease_is_exclusive_until_it_expires(open_store: Callable[[], StateStore]) -> None:
    first, second = open_store(), open_store()

    assert first.acquire_lease("sweep", "w1", 60)
    pass_database_time(first, 30)
    assert not second.acquire_lease("sweep", "w2", 60)
    pass_database_time(first, 30)
    assert second.acquire_lease("sweep", "w2", 60)


def test_listing_pages_newest_first(open_store: Callable[[], StateStore]) -> None:
    store = open_store()
    for n in range(5):
        store.create_upload(record(f"{n:032x}", created_at=NOW + n, owner="r1" if n % 2 else "r2"))

    page, total = store.list_uploads(UploadQuery(owner="r2", limit=2, offset=0))

    assert total == 3
    assert [r.upload_id for r in page] == [f"{4:032x}", f"{2:032x}"]


def test_a_full_sqlite_database_is_reported_as_disk_full(tmp_path: Path) -> None:
    store = SQLStateStore(open_engine(tmp_path, ""))
    store.create_upload(record())
    with db.read(store.engine) as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    # Freeze the database at its current size: this is how "disk full" looks to SQLite.
    event.listen(store.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA max_page_count = {pages}"))
    store.engine.dispose()

    def fill() -> None:
        for n in range(1, 200):
            store.create_upload(record(f"{n:032x}", metadata={"pad": "x" * 2000}))

    with pytest.raises(OSError, match="state database") as caught:
        fill()

    assert caught.value.errno == errno.ENOSPC
    assert store.get_upload("a" * 32) == record()
    store.close()


def test_an_explicit_sqlite_uri_puts_the_database_where_it_says(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "state.db"
    store = SQLStateStore(open_engine(tmp_path / "uploads", f"sqlite:///{target}"))
    store.create_upload(record())

    assert target.is_file()
    assert not (tmp_path / "uploads").exists()
    assert store.get_upload("a" * 32) == record()
    store.close()


def test_only_chunk_receipts_skip_the_sqlite_wal_fsync(tmp_path: Path) -> None:
    """A chunk's one fsync is its data's; every other commit (finalize, complete, keys...) stays FULL."""
    store = SQLStateStore(open_engine(tmp_path, ""))
    levels: list[tuple[str, int]] = []

    def note_level(conn: object, _cursor: object, statement: str, *_args: object) -> None:
        raw = conn.connection.driver_connection  # type: ignore[attr-defined]
        levels.append((statement.split()[0], raw.execute("PRAGMA synchronous").fetchone()[0]))

    store.create_upload(record())
    event.listen(store.engine, "before_cursor_execute", note_level)
    assert store.record_chunk("a" * 32, 0, "0" * 64, NOW) == 1
    receipt = list(levels)
    levels.clear()
    store.create_upload(record("b" * 32))

    assert {level for _, level in receipt} == {1}  # NORMAL
    assert {level for _, level in levels} == {2}  # FULL again on the same pooled connection
    store.close()
