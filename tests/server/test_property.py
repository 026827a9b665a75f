"""Property: any order, duplication, corruption or concurrency of chunk sends gives the exact file or a clear error."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.protocol import HEADER_CHUNK_SHA256, chunk_count
from core.server.app import close_app, create_app
from tests.server.conftest import settings_for

Plan = tuple[bytes, int, list[tuple[int, bool]], int]


@st.composite
def send_plans(draw: st.DrawFn) -> Plan:
    """(file, chunk size, [(chunk index, corrupt?)…] covering every chunk at least once, parallel senders)."""
    chunk_size = draw(st.sampled_from([16, 33, 64]))
    data = draw(st.binary(min_size=0, max_size=6 * chunk_size))
    chunks = chunk_count(len(data), chunk_size)
    index = st.integers(min_value=0, max_value=chunks - 1)
    extra = draw(st.lists(st.tuples(index, st.booleans()), max_size=12))
    every = draw(st.permutations([(i, False) for i in range(chunks)]))
    plan = draw(st.permutations(extra + every))
    return data, chunk_size, plan, draw(st.sampled_from([1, 4]))


def _send(app: Flask, upload_id: str, data: bytes, chunk_size: int, step: tuple[int, bool]) -> tuple[bool, int, str]:
    """Send one chunk, its bytes flipped if ``corrupt``, always with the checksum of the true bytes."""
    index, corrupt = step
    piece = data[index * chunk_size : (index + 1) * chunk_size]
    sent = bytes(b ^ 0xFF for b in piece) if corrupt else piece
    headers = {HEADER_CHUNK_SHA256: hashlib.sha256(piece).hexdigest()}
    response = app.test_client().put(f"/upload/{upload_id}/chunk/{index}", data=sent, headers=headers)
    code = "" if response.status_code < 400 else response.get_json()["error"]["code"]
    return corrupt and bool(piece), response.status_code, code


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=send_plans())
def test_any_send_order_yields_the_exact_file_or_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, plan: Plan
) -> None:
    data, chunk_size, sends, parallel = plan
    app = create_app(settings_for(tmp_path_factory.mktemp("property")))
    client = app.test_client()
    body = {
        "filename": "p.bag",
        "filesize": len(data),
        "chunk_size": chunk_size,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    upload_id = client.post("/upload/init", json=body).get_json()["upload_id"]

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda step: _send(app, upload_id, data, chunk_size, step), sends))

    for corrupted, status, code in results:
        assert (status, code) == (400, "checksum_mismatch") if corrupted else status in (200, 201)
    assert client.post(f"/upload/{upload_id}/finalize").status_code == 202
    assert app.extensions["job_runner"].run_once()
    assert client.get(f"/upload/{upload_id}").get_json()["verified"] is True
    assert client.get(f"/uploads/{upload_id}/file").data == data
    close_app(app)
