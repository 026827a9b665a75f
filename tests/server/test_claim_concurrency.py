"""Two processes (and two app instances) race for the same finalize job, round after round: one result survives.

Each round queues one job. Both sides claim it with a zero lease, so whoever comes second
takes it over at once (the worst case of a stalled worker), and both then try to record
their result. Fencing must let exactly one attempt's result into the database each round,
and only the attempt that held the job last.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from core.protocol import Codec, UploadState
from core.server.state_store import SQLStateStore, UploadRecord
from tests.helpers.state import open_engine
from tests.server.conftest import CHUNK
from tests.server.uploads import Upload

ROUNDS = 300
APP_ROUNDS = 40


def upload_id(n: int) -> str:
    return f"{n:032x}"


def queue_job(store: SQLStateStore, n: int) -> None:
    store.create_upload(
        UploadRecord(upload_id(n), "robot", "x.bag", 1, 1, 1, 0.0, 0.0, compression=Codec.NONE, sha256="s")
    )
    assert store.start_finalize(upload_id(n), 0.0) is not None


def race(
    upload_dir: str, uri: str, name: str, barrier: Any, rounds: int, results: Any, ready: Any
) -> None:  # pragma: no cover - runs in the child processes
    """One competitor: per round, claim (zero lease) and try to complete the upload with its own name."""
    store = SQLStateStore(open_engine(Path(upload_dir), uri))
    ready.put(name)
    for n in range(rounds):
        barrier.wait(timeout=60)
        claimed = store.claim_job(name, 0.0)
        won = False
        if claimed is not None:
            uid, attempt = claimed
            store.transition(uid, (UploadState.FINALIZING,), 1.0, fence=attempt, progress=attempt)
            done = store.finish_attempt(
                uid, attempt, 2.0, (UploadState.FINALIZING,), state=UploadState.COMPLETE, blob_id=f"{name}:{attempt}"
            )
            won = done is not None
        results.put((n, name, claimed[1] if claimed else None, won))
    store.close()


@pytest.mark.slow
def test_two_processes_racing_for_one_job_leave_exactly_one_result(tmp_path: Path, state_store_uri: str) -> None:
    store = SQLStateStore(open_engine(tmp_path, state_store_uri))
    for n in range(ROUNDS):
        queue_job(store, n)
    # Only one job may be due per round: the others wait an hour of database time.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE jobs SET due_at = due_at + 3600")
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding connections
    barrier, results, ready = spawn.Barrier(3), spawn.Queue(), spawn.Queue()
    workers = [
        spawn.Process(target=race, args=(str(tmp_path), state_store_uri, name, barrier, ROUNDS, results, ready))
        for name in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=60)
        outcomes: dict[int, list[tuple[str, int | None, bool]]] = {}
        for n in range(ROUNDS):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(f"UPDATE jobs SET due_at = due_at - 3600 WHERE upload_id = '{upload_id(n)}'")  # noqa: S608
            barrier.wait(timeout=60)
            for _ in workers:
                round_, name, attempt, won = results.get(timeout=60)
                outcomes.setdefault(round_, []).append((name, attempt, won))
    finally:
        for worker in workers:
            worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]

    takeovers = 0
    for n in range(ROUNDS):
        winners = [(name, attempt) for name, attempt, won in outcomes[n] if won]
        assert len(winners) == 1, outcomes[n]
        record = store.get_upload(upload_id(n))
        assert record is not None
        name, attempt = winners[0]
        assert (record.state, record.blob_id) == (UploadState.COMPLETE, f"{name}:{attempt}")
        claims = sorted(a for _, a, _ in outcomes[n] if a is not None)
        assert attempt == claims[-1] or claims == [attempt]  # a superseded attempt never wins
        takeovers += len(claims) == 2
        assert store.job_attempt(upload_id(n)) is None
    store.close()
    assert takeovers > 0  # the race was real: some rounds had two claims


def test_two_app_instances_racing_for_one_job_store_one_intact_copy(
    make_app: Callable[..., Flask], state_store_uri: str
) -> None:
    # A lease of 10 ms: most attempts are taken over while they work; many attempts are allowed for that.
    apps = [make_app(state_store_uri=state_store_uri, job_lease=0.01, job_max_attempts=1000) for _ in range(2)]
    runners = [app.extensions["job_runner"] for app in apps]
    for _ in range(APP_ROUNDS):
        upload = Upload(apps[0].test_client(), os.urandom(3 * CHUNK), CHUNK)
        upload.init(compression="none")
        upload.send_all()
        assert upload.finalize().status_code == 202
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(index: int, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait(timeout=30)
            try:
                while runners[index].run_once():
                    pass
            except BaseException as err:  # surfaced below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert errors == []
        status = upload.status()
        assert (status["state"], status["verified"]) == ("complete", True)
        assert upload.download().data == upload.data
