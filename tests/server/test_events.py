"""Lifecycle signals: what metrics and the dashboard subscribe to, with the documented keyword arguments."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from core.server import events
from tests.server.conftest import CHUNK, FakeClock

SIGNALS = {
    name: getattr(events, name)
    for name in (
        "upload_initialized",
        "chunk_stored",
        "upload_completed",
        "upload_failed",
        "upload_aborted",
        "upload_expired",
    )
}


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name, signal in SIGNALS.items():

        def receiver(_sender: object, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs))

        receivers[name] = receiver
        signal.connect(receiver)
    yield seen
    for name, signal in SIGNALS.items():
        signal.disconnect(receivers[name])


def names(seen: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in seen]


def test_a_completed_upload_emits_init_chunks_and_completion(new_upload: Any, jobs: Any, received: list) -> None:
    upload = new_upload(b"abc" * CHUNK)
    upload.init(compression="zstd")
    upload.send_all()
    upload.finalize()
    jobs.run_once()

    assert names(received) == ["upload_initialized", "chunk_stored", "chunk_stored", "chunk_stored", "upload_completed"]
    assert received[1][1]["bytes"] == CHUNK
    assert received[1][1]["seconds"] >= 0
    completed = received[-1][1]
    assert (completed["filesize"], completed["codec"], completed["verified"]) == (3 * CHUNK, "zstd", True)
    assert completed["ratio"] > 1


def test_failure_abort_and_expiry_are_signalled(
    new_upload: Any, jobs: Any, service: Any, clock: FakeClock, received: list
) -> None:
    failing = new_upload(os.urandom(CHUNK), filename="bad.bag")
    failing.init(sha256="0" * 64)
    failing.send_all()
    failing.finalize()
    jobs.run_once()
    aborted = new_upload(os.urandom(CHUNK), filename="aborted.bag")
    aborted.init()
    aborted.client.delete(f"/upload/{aborted.upload_id}")
    idle = new_upload(os.urandom(CHUNK), filename="idle.bag")
    idle.init()
    clock.advance(service.config.upload_ttl + 1)
    service.sweep()

    by_name = dict(received)
    assert by_name["upload_failed"]["code"] == "checksum_mismatch"
    assert by_name["upload_aborted"]["upload_id"] == aborted.upload_id
    assert by_name["upload_expired"]["upload_id"] == idle.upload_id
