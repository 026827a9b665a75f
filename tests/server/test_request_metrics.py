"""Request metrics: every reply counted; health probes not timed (their latency says nothing)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from core.server.app import create_app

REQUESTS = "ros2_upload_http_requests_total"
SECONDS_COUNT = "ros2_upload_http_request_seconds_count"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_health_probes_are_counted_but_not_timed(tmp_path: Path) -> None:
    client = create_app({"upload_dir": tmp_path, "auth_enabled": False, "background_jobs": False}).test_client()
    health = {"method": "GET", "route": "/health", "status": "200"}
    status = {"method": "GET", "route": "/upload/<upload_id>", "status": "404"}
    before = (sample(REQUESTS, **health), sample(SECONDS_COUNT, route="/health"))
    before_status = (sample(REQUESTS, **status), sample(SECONDS_COUNT, route="/upload/<upload_id>"))

    for _ in range(3):
        assert client.get("/health").status_code == 200
        assert client.get("/upload/" + "0" * 32).status_code == 404

    assert sample(REQUESTS, **health) - before[0] == 3
    assert sample(SECONDS_COUNT, route="/health") == before[1]
    assert sample(REQUESTS, **status) - before_status[0] == 3
    assert sample(SECONDS_COUNT, route="/upload/<upload_id>") - before_status[1] == 3
