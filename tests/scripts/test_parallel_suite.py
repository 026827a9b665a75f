"""`make test` runs the suite on pytest-xdist workers: servers of two workers never pick one port."""

from __future__ import annotations

import pytest

from tests.helpers.processes import free_port


def ports_of(monkeypatch: pytest.MonkeyPatch, worker: str | None, workers: int, count: int = 100) -> set[int]:
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    return {free_port() for _ in range(count)}


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_take_free_ports_from_disjoint_shares(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    shares = [ports_of(monkeypatch, f"gw{n}", workers) for n in range(workers)]

    assert all(len(share) > 10 for share in shares)
    assert sum(len(share) for share in shares) == len(set().union(*shares))


def test_outside_xdist_any_free_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    alone = ports_of(monkeypatch, None, 1, count=200)

    assert {port // 2 % 2 for port in alone} == {0, 1}
