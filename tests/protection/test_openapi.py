"""The OpenAPI document lists every route, loads as OpenAPI 3, and a schemathesis run against gunicorn agrees."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pytest
import requests
from flask import Flask

from core.server.app import create_app
from core.server.openapi import OPENAPI_PATH, document, openapi_path
from tests.helpers.processes import PYTHON
from tests.helpers.servers import GunicornServer


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return create_app({"upload_dir": tmp_path_factory.mktemp("openapi") / "uploads", "background_jobs": False})


def registered_operations(app: Flask) -> set[tuple[str, str]]:
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[-1] != "static"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def test_every_registered_route_is_documented(app: Flask) -> None:
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}

    missing = registered_operations(app) - documented
    stale = documented - registered_operations(app)

    assert not missing, f"add these routes to core/server/openapi.py PATHS: {sorted(missing)}"
    assert not stale, f"these documented routes no longer exist: {sorted(stale)}"


def test_document_is_served_without_a_key(app: Flask) -> None:
    reply = app.test_client().get(OPENAPI_PATH)

    assert reply.status_code == 200
    assert reply.json["openapi"].startswith("3.")
    assert reply.json["paths"]["/upload/{upload_id}/chunk/{index}"]["put"]["responses"]["429"]


def test_document_loads_as_openapi(app: Flask) -> None:
    import schemathesis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schemathesis' own dependency warnings are not ours to fix
        schema = schemathesis.openapi.from_dict(app.test_client().get(OPENAPI_PATH).json)
        operations = [result.ok() for result in schema.get_all_operations()]

    assert {(op.path, op.method) for op in operations} == {(p, m) for p, m in registered_operations(app)} | {
        (OPENAPI_PATH, "get")
    }


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("/upload/<upload_id>/chunk/<int(signed=True):index>", "/upload/{upload_id}/chunk/{index}"),
        ("/uploads/<upload_id>/file", "/uploads/{upload_id}/file"),
        ("/health", "/health"),
    ],
)
def test_flask_rules_become_openapi_paths(rule: str, path: str) -> None:
    assert openapi_path(rule) == path


CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.mark.gunicorn
@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    """Thousands of generated requests (positive and negative) against every documented route, ~45 s."""
    env = {"DASHBOARD_SSE_MAX_SECONDS": "0.5"}
    with GunicornServer(tmp_path / "uploads", workers=2, auth=True, env=env) as server:
        assert requests.get(server.url + OPENAPI_PATH, timeout=10).status_code == 200
        report = tmp_path / "schemathesis.json"
        argv = [
            str(Path(PYTHON).parent / "st"), "run", server.url + OPENAPI_PATH,
            "-H", f"Authorization: Bearer {server.admin_key}",
            "--checks", ",".join(CHECKS),
            "--max-examples", "30", "--max-time", "45", "--workers", "2",
            "--seed", "20251125", "--generation-database", "none", "--no-color",
            "--report", "json", "--report-json-path", str(report),
        ]  # fmt: skip
        run = subprocess.run(argv, capture_output=True, text=True, timeout=150, check=False)
        server_log = server.log()

    assert run.returncode == 0, run.stdout[-8000:]
    summary = run.stdout[run.stdout.rfind("Test cases:") :]
    generated = int(summary.split()[2])
    assert generated >= 2000, summary
    assert "Traceback" not in server_log
    assert json.loads(report.read_text())  # the report was written: the run really happened
