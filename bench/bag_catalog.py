"""``GET /bags`` latency with 100,000 bags in the catalogue, SQLite vs PostgreSQL, against ``GET /health``.

Run: ``.venv/bin/python -m bench bag_catalog -- --bags 100000 --requests 200`` (a few minutes,
most of it filling PostgreSQL). The catalogue is filled directly in the state database: 20
robots, one 60 s bag a minute each, 4 to 6 topics a bag (a camera on every bag, a lidar on every
tenth, 1 % recovered). Each query shape then runs through the real Flask app (routing, JSON,
the store's two statements: the page and its total) in this process; ``GET /health`` (no
database) is the baseline, so the ratio shows what the catalogue adds. PostgreSQL is Debian's,
started here as ``nobody`` with durable defaults, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from core.server import db
from core.server.app import create_app
from core.server.catalog import bag_id_of
from core.server.db import bag_files, bag_topics, bags
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import REPO_ROOT

SECOND = 1_000_000_000
ROBOTS = 20
START = 1_760_000_000 * SECOND
BATCH = 5000
TOPICS = [
    ("/camera/image_raw", "sensor_msgs/msg/Image"),
    ("/imu/data", "sensor_msgs/msg/Imu"),
    ("/odom", "nav_msgs/msg/Odometry"),
    ("/tf", "tf2_msgs/msg/TFMessage"),
]
LIDAR = ("/lidar/points", "sensor_msgs/msg/PointCloud2")
DIAGNOSTICS = ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")


def rows(count: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]]:
    """(bag row, topic rows, file row) for ``count`` bags, newest last."""
    for i in range(count):
        robot = f"robot-{i % ROBOTS}"
        minute = i // ROBOTS
        name = f"{robot}_{minute // 60:05d}_{minute % 60:04d}"
        bag_id = bag_id_of(robot, name)
        start = START + minute * 60 * SECOND
        topics = TOPICS + ([LIDAR] if i % 10 == 0 else []) + ([DIAGNOSTICS] if i % 3 == 0 else [])
        bag = {
            "bag_id": bag_id,
            "owner": robot,
            "name": name,
            "robot_id": robot,
            "session": f"{robot}-s{minute // 600}",
            "split_index": minute % 600,
            "storage": "mcap",
            "recovered": i % 100 == 0,
            "start_ns": start,
            "end_ns": start + 60 * SECOND - 1,
            "message_count": 30_000,
            "size": 700 << 20,
            "stored_size": 700 << 20,
            "updated_at": 0.0,
        }
        topic_rows = [{"bag_id": bag_id, "name": t, "type": m, "message_count": 6000} for t, m in topics]
        file_row = {"upload_id": bag_id, "bag_id": bag_id, "filename": f"{name}.mcap", "facts": "{}"}
        yield bag, topic_rows, file_row


def fill(engine: Any, count: int) -> float:
    """Insert ``count`` bags in batches; seconds it took."""
    started = time.perf_counter()
    pending: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for bag, topics, file in rows(count):
        pending[0].append(bag)
        pending[1].extend(topics)
        pending[2].append(file)
        if len(pending[0]) >= BATCH:
            _flush(engine, pending)
            pending = ([], [], [])
    if pending[0]:
        _flush(engine, pending)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.write(engine) as conn:
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def _flush(engine: Any, pending: tuple[list[Any], list[Any], list[Any]]) -> None:
    with db.write(engine) as conn:
        conn.execute(insert(bags), pending[0])
        conn.execute(insert(bag_topics), pending[1])
        conn.execute(insert(bag_files), pending[2])


def queries(count: int) -> dict[str, str]:
    """The query shapes an operator uses, with a time window in the middle of the catalogue."""
    middle = START + (count // ROBOTS // 2) * 60 * SECOND
    return {
        "newest page (50)": "/bags",
        "one robot": "/bags?robot=robot-7",
        "1 h window": f"/bags?since_ns={middle}&until_ns={middle + 3600 * SECOND}",
        "robot + 1 h window": f"/bags?robot=robot-7&since_ns={middle}&until_ns={middle + 3600 * SECOND}",
        "topic (every bag)": "/bags?topic=/camera/image_raw",
        "topic prefix (1 in 10)": "/bags?topic=/lidar&topic_prefix=true",
        "type + robot": "/bags?type=sensor_msgs/msg/PointCloud2&robot=robot-3",
        "recovered (1 in 100)": "/bags?recovered=true",
        "page 100 (offset 5000)": "/bags?offset=5000",
    }


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def timed(client: Any, path: str, n: int) -> list[float]:
    client.get(path)  # warm the cache and the plan
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        reply = client.get(path)
        latencies.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, reply.data
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per query shape and engine")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.bags} bags, {args.requests} requests per row")
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="catalog-", dir=out) as tmp, PostgresServer(durable=True) as postgres:
        for engine_name, uri in (("sqlite", ""), ("postgresql", postgres.create_database())):
            settings = {
                "upload_dir": Path(tmp) / engine_name,
                "state_store_uri": uri,
                "auth_enabled": False,
                "ratelimit_enabled": False,
                "background_jobs": False,
            }
            app = create_app(settings)
            try:
                seconds = fill(app.extensions[db.EXTENSION], args.bags)
                print(f"{engine_name}: filled {args.bags} bags in {seconds:.0f} s")
                client = app.test_client()
                shapes = {"GET /health (baseline)": "/health", **queries(args.bags)}
                results[engine_name] = {label: timed(client, path, args.requests) for label, path in shapes.items()}
                total = json.loads(client.get("/bags").data)["total"]
                assert total == args.bags
            finally:
                app.extensions["job_runner"].stop()
                app.extensions["dashboard_metrics"].close()
                app.extensions["state_store"].close()
    print(f"{'query':<26} {'engine':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99 / health':>13}")
    for engine_name, by_shape in results.items():
        base = p(by_shape["GET /health (baseline)"], 99)
        for label, latencies in by_shape.items():
            p99 = p(latencies, 99)
            print(f"{label:<26} {engine_name:>10} {p(latencies, 50):>8.2f} {p99:>8.2f} {p99 / base:>13.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
