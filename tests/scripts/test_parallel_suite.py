"""`make test` runs the suite on pytest-xdist workers: servers of two workers never pick one port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.processes import free_port
from tests.helpers.seaweedfs import SeaweedFS


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


TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on, from its socket inodes and /proc/net/tcp."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = {link[8:-1] for fd in fds.iterdir() if (link := os.readlink(fd)).startswith("socket:[")}
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == TCP_LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_seaweedfs_listens_only_on_ports_of_its_workers_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """weed puts each gRPC port at its HTTP port + 10000 unless told: with 3 workers that is another worker's share."""
    workers = 3
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))

    with SeaweedFS(tmp_path) as server:
        assert server.process is not None
        listening = listening_ports(server.process.pid)

    assert listening >= {server.ports["s3"], server.grpc_ports["master"]}
    assert {port // 2 % workers for port in listening} == {1}, sorted(listening)
