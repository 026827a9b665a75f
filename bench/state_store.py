"""Chunk PUT throughput and status-poll p99 with the state in SQLite (the baseline) vs PostgreSQL, same run.

Run: ``.venv/bin/python -m bench state_store -- --size-mib 256`` (about a minute). The real
server under gunicorn (4 workers) receives one upload per run over loopback, with 1 and 4
parallel chunk streams, while one more client polls ``GET /upload/<id>`` as fast as it can
(a dashboard or a robot checking progress). Every chunk commits a receipt to the state
database before it is acknowledged, so small chunks stress the database more than the disk;
the default 1 MiB chunks are the smallest a robot sends. PostgreSQL is Debian's, started here
as ``nobody`` with durable defaults (``fsync=on``, ``synchronous_commit=on``), on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.server_throughput import MB, Payload, gunicorn, upload
from core.protocol import MiB, upload_status_url
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import REPO_ROOT


class StatusPoller:
    """Polls one upload's status in a loop while the upload runs; latencies in milliseconds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.upload_id: str | None = None
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                if self.upload_id is None:
                    time.sleep(0.005)
                    continue
                started = time.perf_counter()
                session.get(upload_status_url(self.url, self.upload_id), timeout=30).raise_for_status()
                self.latencies.append((time.perf_counter() - started) * 1000)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def newest_upload(url: str) -> str | None:
    reply = requests.get(url.rsplit("/upload", 1)[0] + "/uploads?limit=1", timeout=30).json()
    return reply["uploads"][0]["upload_id"] if reply["uploads"] else None


def run_once(url: str, payload: Payload, streams: int) -> tuple[float, list[float]]:
    """MB/s until the last chunk was acknowledged, and the status latencies seen meanwhile."""
    before = newest_upload(url)
    with StatusPoller(url) as poller:

        def find_upload() -> None:
            while poller.upload_id is None:
                found = newest_upload(url)
                if found != before:
                    poller.upload_id = found
                time.sleep(0.01)

        finder = threading.Thread(target=find_upload, daemon=True)
        finder.start()
        result = upload(url, payload, streams, lambda: 0.0, finalize=False)
        finder.join(timeout=5)
    return payload.size / MB / result.seconds, poller.latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, default=1)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine and stream count (median shown)")
    args = parser.parse_args()

    payload = Payload(args.size_mib * MiB, args.chunk_mib * MiB)
    print(f"load average before: {os.getloadavg()[0]:.2f}; file {payload.size / MB:.0f} MB in {payload.count} chunks")
    print(f"{'streams':>7} {'engine':>10} {'PUT MB/s':>9} {'vs sqlite':>9} {'status p99 ms':>14} {'polls':>6}")
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="state-", dir=out) as tmp, PostgresServer(durable=True) as postgres:
        work = Path(tmp)
        engines = {"sqlite": "", "postgresql": postgres.create_database()}
        servers = {
            name: gunicorn("upload_server:app", work / name, work, STATE_STORE_URI=uri) for name, uri in engines.items()
        }
        urls = {name: server.__enter__()[0] for name, server in servers.items()}
        try:
            for streams in (int(s) for s in args.streams.split(",")):
                rates: dict[str, list[float]] = {name: [] for name in engines}
                latencies: dict[str, list[float]] = {name: [] for name in engines}
                for _ in range(args.repeat):  # alternate, so drift in machine load hits both alike
                    for name in engines:
                        rate, seen = run_once(urls[name], payload, streams)
                        rates[name].append(rate)
                        latencies[name].extend(seen)
                base = statistics.median(rates["sqlite"])
                for name in engines:
                    rate = statistics.median(rates[name])
                    print(
                        f"{streams:>7} {name:>10} {rate:>9.0f} {rate / base:>9.2f}"
                        f" {p99(latencies[name]):>14.1f} {len(latencies[name]):>6}"
                    )
        finally:
            for server in servers.values():
                server.__exit__(None, None, None)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
