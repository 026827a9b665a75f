"""Per-request cost of auth, rate limits, metrics and headers, open-loop, against a hello-world under the same gunicorn.

``python -m bench.protection_overhead [--rate 500] [--seconds 5] [--rounds 3]`` (``--short``: 2 s, 2 rounds).

Three gunicorn servers start with ``gunicorn.conf.py`` and ``-w 4`` (gthread, 4 threads each):
``bench/baseline_hello.py`` (the baseline: the routes' JSON and nothing else), the real server as
shipped (API key, flask-limiter ``memory://``, Prometheus multiprocess metrics, security headers),
and the real server with ``AUTH_ENABLED=0 RATELIMIT_ENABLED=0 METRICS_ENABLED=0``. Each is sent
``GET /health`` and ``GET /upload/<id>`` (the status poll of a real upload, with a key) at a fixed
rate: an open-loop generator sends on schedule whether or not earlier replies came back, and a
latency is counted from the moment its request was due, so a stalled server cannot hide its queue
(no coordinated omission). Rounds rotate the order of the targets; every ratio is the median of
the per-round ratios to the hello-world's same route in the same round. Server CPU per request is
master + workers from /proc; "new threads/req" counts the thread ids that appeared in the server's
processes during the run (sampled every 2 ms, see ``ThreadCensus``): a thread per request shows as ~1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.server_throughput import cpu_seconds, gunicorn
from core.protocol import HEADER_AUTHORIZATION, HEALTH_PATH, init_url, upload_status_url
from core.server.keys import key_store_for
from tests.helpers.processes import REPO_ROOT

POOL = 16  # keep-alive connections opened up front, used in turn so requests spread over the workers
PROTECTION_OFF = {"AUTH_ENABLED": "0", "RATELIMIT_ENABLED": "0", "METRICS_ENABLED": "0"}
# Limits high enough that the run never meets them: the limiter's bookkeeping runs, its 429 never does.
# The per-key limits too: 500 req/s from one key met RATELIMIT_KEY_STATUS (600/min per worker) and 429s were timed.
_LIMITED = ("RATELIMIT_STATUS", "RATELIMIT_DEFAULT", "RATELIMIT_KEY_STATUS", "RATELIMIT_KEY_DEFAULT")
HIGH_LIMITS = dict.fromkeys(_LIMITED, "1000000 per minute")
SERVERS: dict[str, tuple[str, dict[str, str]]] = {
    "hello-world (baseline)": ("bench.baseline_hello:app", {}),
    "server as shipped": ("upload_server:app", {"AUTH_ENABLED": "1", "RATELIMIT_ENABLED": "1", **HIGH_LIMITS}),
    "server, protection off": ("upload_server:app", PROTECTION_OFF),
}
BASELINE = "hello-world (baseline)"


@dataclass
class Run:
    p50: float
    p99: float
    cpu_per_request: float
    threads_per_request: float
    errors: int


class ThreadCensus:
    """Distinct thread ids seen in a server's processes, sampled every few ms while a run lasts.

    A thread that lives shorter than the interval can be missed, so the count is a lower bound;
    flask-limiter's old per-request Timer lived 10 ms and was seen at ``INTERVAL`` = 2 ms.
    """

    INTERVAL = 0.002

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="thread-census", daemon=True)

    def _tids(self) -> set[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        tids: set[int] = set()
        for pid in [self.pid, *map(int, children)]:
            with contextlib.suppress(FileNotFoundError):
                tids.update(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        return tids

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.seen |= self._tids()

    def __enter__(self) -> ThreadCensus:
        self.seen = self._tids()
        self._before = len(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def new_threads(self) -> int:
        return len(self.seen) - self._before


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"))
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])


async def open_loop(
    port: int, path: str, headers: dict[str, str], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Send ``GET path`` ``rate`` times a second on schedule; latencies (s) from each request's due time, errors."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    idle: collections.deque[_Connection] = collections.deque()
    for _ in range(POOL):
        idle.append(_Connection(*await asyncio.open_connection("127.0.0.1", port)))
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        nonlocal errors
        conn = idle.popleft() if idle else _Connection(*await asyncio.open_connection("127.0.0.1", port))
        status = await conn.get(request)
        latencies.append(loop.time() - due)
        errors += status != 200
        idle.append(conn)

    start = loop.time() + 0.05
    tasks = []
    for number in range(int(rate * seconds)):
        due = start + number / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.writer.close()
    return latencies, errors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(port: int, pid: int, path: str, headers: dict[str, str], rate: float, seconds: float) -> Run:
    cpu = cpu_seconds(pid)
    with ThreadCensus(pid) as census:
        latencies, errors = asyncio.run(open_loop(port, path, headers, rate, seconds))
    count = len(latencies)
    return Run(
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        (cpu_seconds(pid) - cpu) / count,
        census.new_threads / count,
        errors,
    )


def start_upload(url: str, headers: dict[str, str]) -> str:
    """A real upload to poll (the server's status route then does its real lookup)."""
    body = {"filename": "poll.bag", "filesize": 64 << 20, "chunk_size": 8 << 20, "sha256": os.urandom(32).hex()}
    reply = requests.post(init_url(url), json=body, headers=headers, timeout=30)
    reply.raise_for_status()
    return str(reply.json()["upload_id"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="2 s per target, 2 rounds")
    parser.add_argument(
        "--before", type=Path, help="a checkout of older code (git archive): its server joins the run as 'before'"
    )
    args = parser.parse_args(argv)
    servers: dict[str, tuple[Any, ...]] = dict(SERVERS)
    if args.before:
        servers["server as shipped, before"] = (*SERVERS["server as shipped"], args.before.resolve())
    if args.short:
        args.seconds, args.rounds = 2.0, 2
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.rate:.0f} req/s open loop, {args.seconds:.0f} s x "
          f"{args.rounds} rounds per target")  # fmt: skip
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str], list[Run]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="protection-", dir=out) as tmp, contextlib.ExitStack() as stack:
        targets = []
        for number, (name, (app, env, *tree)) in enumerate(servers.items()):
            storage = Path(tmp) / str(number)
            storage.mkdir()
            token = key_store_for(storage).create("bench-robot").token
            url, process = stack.enter_context(gunicorn(app, storage, Path(tmp), tree=(tree or [REPO_ROOT])[0], **env))
            headers = {HEADER_AUTHORIZATION: f"Bearer {token}"}
            upload_id = "hello" if name == BASELINE else start_upload(url, headers)
            status_path = upload_status_url("/upload", upload_id)
            port = int(url.split(":")[2].split("/")[0])
            for route, path in (("GET /health", HEALTH_PATH), ("GET /upload/<id>", status_path)):
                targets.append((name, route, port, process.pid, path, headers))
        for target in targets:  # warm-up: imports, first-request hooks, connection pools
            measure(*target[2:], args.rate, 0.5)
        for round_number in range(args.rounds):
            shift = round_number % len(targets)
            for name, route, *rest in targets[shift:] + targets[:shift]:
                runs[(name, route)].append(measure(*rest, args.rate, args.seconds))
    columns = ["server", "route", "P50 ms", "P99 ms", "P50 / hello", "P99 / hello", "CPU µs/req", "CPU / hello"]
    print("| " + " | ".join([*columns, "new threads/req", "errors"]) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for (name, route), results in runs.items():
        base = runs[(BASELINE, route)]

        def ratio(field: str, results: list[Run] = results, base: list[Run] = base) -> float:
            return statistics.median(getattr(r, field) / getattr(b, field) for r, b in zip(results, base, strict=True))

        p50 = statistics.median(r.p50 for r in results) * 1e3
        p99 = statistics.median(r.p99 for r in results) * 1e3
        cpu = statistics.median(r.cpu_per_request for r in results) * 1e6
        threads = statistics.median(r.threads_per_request for r in results)
        errors = sum(r.errors for r in results)
        print(f"| {name} | {route} | {p50:.2f} | {p99:.2f} | {ratio('p50'):.2f} | {ratio('p99'):.2f} | {cpu:.0f}"
              f" | {ratio('cpu_per_request'):.2f} | {threads:.3f} | {errors} |", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
