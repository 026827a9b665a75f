"""Prometheus metrics at ``GET /metrics``, summed over every gunicorn worker (prometheus_client multiprocess mode).

Counters and histograms are fed by the upload lifecycle signals (``core.server.events``)
and by request hooks, so no route knows about metrics. Each worker writes its samples
to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by gunicorn.conf.py or the systemd unit);
a scrape, whichever worker answers it, merges them all. Values that are facts about the
shared state (disk free, active uploads, robots online) are computed at scrape time from
the state stores instead, so they are the same whichever worker is asked.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from core.config import ServerConfig
from core.protocol import HEALTH_PATH, UploadState
from core.server import events, robots
from core.server.limits import exempt
from core.server.state_store import StateStore, UploadQuery

METRICS_PATH = "/metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "ros2_upload"
EXTENSION = "metrics"

# prometheus_client decided at import whether values go to per-process files; the folder must exist.
if os.environ.get(MULTIPROC_ENV):
    Path(os.environ[MULTIPROC_ENV]).mkdir(parents=True, exist_ok=True)

UPLOADS_STARTED = Counter(
    f"{PREFIX}_uploads_started_total", "Uploads initialised, by kind (new, resumed, deduplicated)", ["kind"]
)
UPLOADS_COMPLETED = Counter(f"{PREFIX}_uploads_completed_total", "Uploads verified and stored, by codec", ["codec"])
UPLOADS_FAILED = Counter(f"{PREFIX}_uploads_failed_total", "Uploads that failed verification or storage", ["code"])
UPLOADS_ABORTED = Counter(f"{PREFIX}_uploads_aborted_total", "Uploads aborted by their client")
UPLOADS_EXPIRED = Counter(f"{PREFIX}_uploads_expired_total", "Incomplete uploads removed by the TTL sweep")
FINALIZE_RETRIES = Counter(
    f"{PREFIX}_finalize_retries_total",
    "Finalize attempts given back for a retry, by reason (disk_full, store_unavailable: not counted toward the limit)",
    ["reason"],
)
BYTES_RECEIVED = Counter(f"{PREFIX}_bytes_received_total", "Chunk bytes stored (fsynced and acknowledged)")
CHUNK_SECONDS = Histogram(
    f"{PREFIX}_chunk_seconds",
    "Time to receive, verify and fsync one chunk",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
COMPRESSION_RATIO = Histogram(
    f"{PREFIX}_compression_ratio",
    "Stored size / original size of each completed upload (1.0: stored as is)",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests_total", "HTTP replies by route and status", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    f"{PREFIX}_http_request_seconds",
    "Time from request start to reply, by route (not /health: a constant reply, polled by load balancers)",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RATE_LIMITED = Counter(f"{PREFIX}_rate_limited_total", "Requests rejected with 429 by the app's limiter", ["route"])

# Every metric family a scrape must show: alert rules and the Grafana dashboard may use only these.
LIVE_METRICS = (
    f"{PREFIX}_disk_free_bytes",
    f"{PREFIX}_disk_total_bytes",
    f"{PREFIX}_active_uploads",
    f"{PREFIX}_robots_online",
)


# --- lifecycle signals ---------------------------------------------------------------------
def _on_initialized(_sender: object, **kw: Any) -> None:
    kind = "deduplicated" if kw.get("deduplicated") else "resumed" if kw.get("resumed") else "new"
    UPLOADS_STARTED.labels(kind).inc()


def _on_chunk(_sender: object, **kw: Any) -> None:
    BYTES_RECEIVED.inc(kw["bytes"])
    CHUNK_SECONDS.observe(kw["seconds"])


def _on_completed(_sender: object, **kw: Any) -> None:
    codec = kw.get("codec")
    UPLOADS_COMPLETED.labels(getattr(codec, "value", codec) or "none").inc()
    # stored/original computed here: the signal's own ``ratio`` follows the API's original/stored convention.
    filesize, stored = kw.get("filesize"), kw.get("stored_size")
    if filesize and stored is not None:
        COMPRESSION_RATIO.observe(stored / filesize)


def _on_failed(_sender: object, **kw: Any) -> None:
    code = kw.get("code")
    UPLOADS_FAILED.labels(getattr(code, "value", code) or "unknown").inc()


_HANDLERS: tuple[tuple[Any, Callable[..., None]], ...] = (
    (events.upload_initialized, _on_initialized),
    (events.chunk_stored, _on_chunk),
    (events.upload_completed, _on_completed),
    (events.upload_failed, _on_failed),
    (events.upload_aborted, lambda _s, **_kw: UPLOADS_ABORTED.inc()),
    (events.upload_expired, lambda _s, **_kw: UPLOADS_EXPIRED.inc()),
    (events.finalize_retried, lambda _s, **kw: FINALIZE_RETRIES.labels(kw["reason"]).inc()),
)
for _signal, _handler in _HANDLERS:
    # Process-wide, like the counters themselves: several apps in one process (tests) share them.
    _signal.connect(_handler, weak=False)


# --- request hooks ---------------------------------------------------------------------
def _route() -> str:
    """The URL rule, never the concrete URL: upload ids must not become label values."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


class _Children:
    """Labelled children by their label values, looked up once: ``labels()`` validates and locks on every call.

    The label values are route templates, methods and status codes, so the table stays small.
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


_REQUESTS = _Children(HTTP_REQUESTS)
_SECONDS = _Children(HTTP_SECONDS)


def _count_reply(response: Response) -> Response:
    route = _route()
    if route == METRICS_PATH:
        return response
    _REQUESTS(request.method, route, str(response.status_code)).inc()
    # Health probes are counted (the error ratio's denominator stays true) but not timed: their
    # latency says nothing, and each histogram sample is two more multiprocess file writes.
    started = g.pop("metrics_started", None) if route != HEALTH_PATH else None
    if started is not None:
        _SECONDS(route).observe(time.perf_counter() - started)
    if response.status_code == 429:
        RATE_LIMITED.labels(route).inc()
    return response


# --- scrape-time facts about the shared state ---------------------------------------------
class LiveCollector(Collector):
    """Gauges read from the storage root and the state stores at scrape time."""

    def __init__(self, config: ServerConfig, active_uploads: Callable[[], int], robots_online: Callable[[], int]):
        self.config = config
        self.active_uploads = active_uploads
        self.robots_online = robots_online

    def collect(self) -> Iterator[Metric]:
        usage = shutil.disk_usage(self.config.upload_dir)
        yield GaugeMetricFamily(LIVE_METRICS[0], "Free bytes on the UPLOAD_DIR filesystem", value=usage.free)
        yield GaugeMetricFamily(LIVE_METRICS[1], "Size of the UPLOAD_DIR filesystem", value=usage.total)
        yield GaugeMetricFamily(LIVE_METRICS[2], "Uploads in state uploading", value=self.active_uploads())
        yield GaugeMetricFamily(LIVE_METRICS[3], "Robots whose last heartbeat is recent", value=self.robots_online())


def exposition(live: Collector) -> bytes:
    """The text exposition: every worker's samples (multiprocess) or this process's, plus the live gauges."""
    registry = CollectorRegistry()
    registry.register(live)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)


# A scraper every 15 s would exhaust the default limits; it still needs a key (Prometheus: bearer token).
@exempt
def _serve_metrics() -> Response:
    live: Collector = current_app.extensions[EXTENSION]
    return Response(exposition(live), mimetype=CONTENT_TYPE_LATEST)


def _active_uploads(app: Flask) -> Callable[[], int]:
    def count() -> int:
        state: StateStore = app.extensions["state_store"]
        return state.list_uploads(UploadQuery(state=UploadState.UPLOADING, limit=1))[1]

    return count


def _robots_online(app: Flask, config: ServerConfig) -> Callable[[], int]:
    def count() -> int:
        if robots.EXTENSION not in app.extensions:
            return 0
        cutoff = time.time() - config.robot_offline_after
        return sum(1 for robot in robots.robot_store(app).robots() if robot.last_seen >= cutoff)

    return count


def init_app(app: Flask, config: ServerConfig) -> None:
    """Count every reply and serve ``GET /metrics`` (unless METRICS_ENABLED=0); call after the stores exist."""
    if not config.metrics_enabled:
        return
    app.extensions[EXTENSION] = LiveCollector(config, _active_uploads(app), _robots_online(app, config))
    app.before_request(_start_timer)
    app.after_request(_count_reply)
    app.add_url_rule(METRICS_PATH, "metrics", _serve_metrics, methods=["GET"])
