"""Do open dashboards slow the server down? p99 of ``/health`` and of chunk PUTs with 0 and with N viewers.

``python -m bench.dashboard_streams [--viewers 50] [--health 400] [--chunks 150] [--max-streams 2]``

A real gunicorn with the shipped ``gunicorn.conf.py`` (4 gthread workers x 4 threads), a state of a
few hundred uploads, and robots heartbeating every second with changing status (so every tick's
snapshot differs and every stream sends an event each second: the worst case). Each viewer acts as
the page does: it opens ``/dashboard/events``; told to poll (over ``DASHBOARD_SSE_MAX_STREAMS``), it
polls ``/dashboard/api/state?live=1`` every 5 s; at ``bye`` it reconnects. The baseline is the same
server in the same run with no viewer. ``--max-streams 1000`` shows what the cap prevents.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from core.protocol import HEADER_CHUNK_SHA256, HEALTH_PATH, KiB, chunk_url, init_url
from tests.helpers.servers import GunicornServer

POLL_SECONDS = 5.0
CHUNK = 256 * KiB


REQUEST_TIMEOUT = 10.0  # a request not answered by then counts as unanswered (and at this latency)


@dataclass
class Latencies:
    health: list[float]
    chunks: list[float]
    unanswered: int = 0

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values) or [REQUEST_TIMEOUT]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self, name: str, baseline: Latencies | None) -> str:
        h99, c99 = self.p(self.health, 0.99), self.p(self.chunks, 0.99)
        ratio = "1.00 / 1.00"
        if baseline is not None:
            ratio = f"{h99 / baseline.p(baseline.health, 0.99):.2f} / {c99 / baseline.p(baseline.chunks, 0.99):.2f}"
        return (
            f"| {name} | {self.p(self.health, 0.5):.1f} / {h99:.1f} | {self.p(self.chunks, 0.5):.1f} / {c99:.1f} | "
            f"{ratio} | {self.unanswered} |"
        )


class Viewer(threading.Thread):
    """One browser tab: a stream while the server admits it, else polling the shared snapshot."""

    def __init__(self, server: GunicornServer, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.stop_event = server, stop
        self.headers = server.headers(server.admin_key)
        self.mode = "connecting"
        self.events = 0

    def run(self) -> None:
        session = requests.Session()
        while not self.stop_event.is_set():
            with contextlib.suppress(requests.RequestException):
                if self._stream(session) == "poll":
                    self._poll(session, until=time.monotonic() + 30)

    def _stream(self, session: requests.Session) -> str:
        url = self.server.url + "/dashboard/events"
        with session.get(url, headers=self.headers, stream=True, timeout=(5, 60)) as reply:
            event = ""
            for line in reply.iter_lines(decode_unicode=True):
                if self.stop_event.is_set():
                    return "stop"
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "poll":
                        return "poll"
                    if event == "state":
                        self.mode = "stream"
                        self.events += 1
                    if event == "bye":
                        return "bye"
        return "ended"

    def _poll(self, session: requests.Session, until: float) -> None:
        self.mode = "poll"
        url = self.server.url + "/dashboard/api/state?live=1"
        while not self.stop_event.is_set() and time.monotonic() < until:
            session.get(url, headers=self.headers, timeout=10)
            self.events += 1
            self.stop_event.wait(POLL_SECONDS)


def heartbeats(server: GunicornServer, stop: threading.Event, robots: int) -> None:
    """Robots whose status changes every second, so every snapshot is new."""
    session = requests.Session()
    beat = 0
    while not stop.is_set():
        beat += 1
        for n in range(robots):
            status = {"recorder": {"state": "recording", "bytes_written": beat * 1000 + n}, "uploads": []}
            with contextlib.suppress(requests.RequestException):
                session.post(
                    f"{server.url}/robots/robot-{n}/heartbeat",
                    json=status,
                    headers=server.headers(server.admin_key),
                    timeout=5,
                )
        stop.wait(1.0)


def seed(server: GunicornServer, uploads: int) -> None:
    """Upload records for the snapshot to carry (init only: records, not bytes)."""
    session = requests.Session()
    for n in range(uploads):
        body = {"filename": f"seed_{n:04d}.mcap", "filesize": 1000, "chunks": 1, "metadata": {"bag": f"b{n}"}}
        session.post(init_url(server.url), json=body, headers=server.headers(), timeout=10).raise_for_status()


def timed(call: Callable[[], requests.Response]) -> float | None:
    """Seconds until the reply; None when none came within REQUEST_TIMEOUT (a starved server)."""
    started = time.perf_counter()
    try:
        call().raise_for_status()
    except requests.Timeout:
        return None
    return time.perf_counter() - started


def measure(server: GunicornServer, health: int, chunks: int) -> Latencies:
    """``/health`` and chunk PUTs measured at the same time, one request at a time each."""
    data = os.urandom(CHUNK)
    digest = hashlib.sha256(data).hexdigest()
    body = {"filename": "bench.bin", "filesize": CHUNK * chunks, "chunks": chunks, "chunk_size": CHUNK}
    health_times: list[float] = []
    chunk_times: list[float] = []
    unanswered: list[int] = []

    def record(into: list[float], seconds: float | None) -> None:
        if seconds is None:
            unanswered.append(1)
            seconds = REQUEST_TIMEOUT
        into.append(seconds)

    def health_loop() -> None:
        session = requests.Session()
        for _ in range(health):
            record(health_times, timed(lambda: session.get(server.url + HEALTH_PATH, timeout=REQUEST_TIMEOUT)))
            time.sleep(0.02)

    def chunk_loop() -> None:
        session = requests.Session()
        try:
            reply = session.post(init_url(server.url), json=body, headers=server.headers(), timeout=REQUEST_TIMEOUT)
        except requests.Timeout:
            unanswered.extend([1] * (chunks + 1))
            chunk_times.extend([REQUEST_TIMEOUT] * chunks)
            return
        upload_id = reply.json()["upload_id"]
        headers = server.headers(**{HEADER_CHUNK_SHA256: digest})
        for index in range(chunks):
            url = chunk_url(server.url, upload_id, index)
            put = lambda u=url: session.put(u, data=data, headers=headers, timeout=REQUEST_TIMEOUT)  # noqa: E731
            record(chunk_times, timed(put))
            time.sleep(0.02)

    threads = [threading.Thread(target=health_loop), threading.Thread(target=chunk_loop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Latencies(health_times, chunk_times, len(unanswered))


@contextlib.contextmanager
def viewers(server: GunicornServer, count: int) -> Iterator[list[Viewer]]:
    stop = threading.Event()
    tabs = [Viewer(server, stop) for _ in range(count)]
    for tab in tabs:
        tab.start()
    deadline = time.monotonic() + 60
    while any(tab.mode == "connecting" for tab in tabs) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield tabs
    finally:
        stop.set()


def run(max_streams: int, args: argparse.Namespace, root: Path) -> None:
    env = {
        "DASHBOARD_SSE_MAX_STREAMS": str(max_streams),
        "ROBOT_OFFLINE_AFTER": "30",
        "HEARTBEAT_RATE_LIMIT": "1000 per minute",
    }
    with GunicornServer(root / f"uploads-{max_streams}", auth=True, env=env) as server:
        seed(server, args.uploads)
        stop = threading.Event()
        beats = threading.Thread(target=heartbeats, args=(server, stop, args.robots), daemon=True)
        beats.start()
        time.sleep(2)
        baseline = measure(server, args.health, args.chunks)
        with viewers(server, args.viewers) as tabs:
            time.sleep(3)
            loaded = measure(server, args.health, args.chunks)
            streaming = sum(1 for t in tabs if t.mode == "stream")
            polling = sum(1 for t in tabs if t.mode == "poll")
        stop.set()
    print(f"\nDASHBOARD_SSE_MAX_STREAMS={max_streams} (x4 workers): {streaming} viewers streaming, {polling} polling")
    print("| viewers | /health p50 / p99 ms | chunk PUT p50 / p99 ms | p99 ratio health / chunk | unanswered |")
    print("|---|---|---|---|---|")
    print(baseline.row("0 (baseline)", None))
    print(loaded.row(str(args.viewers), baseline))
    print(f"median events per viewer: {statistics.median(t.events for t in tabs):.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--health", type=int, default=400, help="/health requests per phase")
    parser.add_argument("--chunks", type=int, default=150, help="256 KiB chunk PUTs per phase")
    parser.add_argument("--uploads", type=int, default=300, help="upload records in the state")
    parser.add_argument("--robots", type=int, default=5)
    parser.add_argument("--max-streams", default="2", help="comma-separated DASHBOARD_SSE_MAX_STREAMS values")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    for value in args.max_streams.split(","):
        run(int(value), args, root)


if __name__ == "__main__":
    main()
