"""``/health/detailed`` names every failing dependency with a 503; LOG_FORMAT=json gives one JSON object per line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.protocol import ErrorCode, GiB
from core.server.app import create_app
from core.server.health import DETAILED_HEALTH_PATH
from tests.helpers.processes import PYTHON, REPO_ROOT, free_port


def client(tmp_path: Path, **settings: Any) -> FlaskClient:
    app = create_app({"upload_dir": tmp_path / "uploads", "auth_enabled": False, **settings})
    return app.test_client()


def test_healthy_server_reports_every_check_ok(tmp_path: Path) -> None:
    reply = client(tmp_path).get(DETAILED_HEALTH_PATH)
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "storage", "rate_limiter", "jobs", "blob_store"}
    assert body["checks"]["storage"]["free_bytes"] > 0


def test_low_disk_space_degrades_with_a_reason(tmp_path: Path) -> None:
    reply = client(tmp_path, health_min_free=10**6 * GiB).get(DETAILED_HEALTH_PATH)
    assert reply.status_code == 503
    body = reply.get_json()
    assert body["status"] == "degraded"
    assert body["error"]["code"] == ErrorCode.SERVICE_UNAVAILABLE.value
    (reason,) = body["reasons"]
    assert reason.startswith("storage: only ")
    assert "HEALTH_MIN_FREE" in reason


def test_unreachable_limiter_storage_degrades_with_a_reason(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    reply = client(tmp_path, ratelimit_enabled=True, ratelimit_storage_uri=dead).get(DETAILED_HEALTH_PATH)
    assert reply.status_code == 503
    assert any(r.startswith("rate_limiter: rate-limit storage") for r in reply.get_json()["reasons"])


def test_unwritable_storage_degrades_with_a_reason(tmp_path: Path) -> None:
    test_client = client(tmp_path)
    (tmp_path / "uploads" / ".health").write_text("a file where the probe folder should be")
    reply = test_client.get(DETAILED_HEALTH_PATH)
    assert reply.status_code == 503
    assert any(r.startswith("storage: ") for r in reply.get_json()["reasons"])


def test_dead_background_jobs_degrade_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test_client = client(tmp_path)
    assert test_client.get(DETAILED_HEALTH_PATH).get_json()["checks"]["jobs"]["runner_alive"] is True
    runner = test_client.application.extensions["job_runner"]
    runner.stop()
    # Each request restarts a stopped runner; this one cannot be restarted, like a thread that keeps dying.
    monkeypatch.setattr(runner, "start", lambda: None)
    reply = test_client.get(DETAILED_HEALTH_PATH)
    assert reply.status_code == 503
    assert reply.get_json()["checks"]["jobs"]["runner_alive"] is False
    assert "jobs: background job thread is not running in this process" in reply.get_json()["reasons"]


@pytest.mark.parametrize(("log_format", "is_json"), [("json", True), ("text", False)])
def test_log_format_setting(tmp_path: Path, log_format: str, is_json: bool) -> None:
    script = (
        "import logging; from core.server.app import create_app;"
        f"create_app({{'upload_dir': {str(tmp_path)!r}, 'auth_enabled': False}});"
        "logging.getLogger('upload_server').info('Received chunk %d/%d', 1, 10, extra={'upload_id': 'abc'})"
    )
    result = subprocess.run(
        [PYTHON, "-c", script],
        cwd=REPO_ROOT,
        env={"LOG_FORMAT": log_format, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = next(line for line in result.stderr.splitlines() if "Received chunk" in line)
    if is_json:
        document = json.loads(line)
        assert document["message"] == "Received chunk 1/10"
        assert document["level"] == "INFO"
        assert document["logger"] == "upload_server"
        assert document["upload_id"] == "abc"
    else:
        assert " - upload_server - INFO - Received chunk 1/10" in line
