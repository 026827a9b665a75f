"""The OpenAPI document lists every route, loads as OpenAPI 3, and a schemathesis run against gunicorn agrees."""

from __future__ import annotations

import os
import subprocess
import warnings
from collections import Counter
from pathlib import Path

import pytest
import requests
from flask import Flask

from core.server.app import create_app
from core.server.openapi import OPENAPI_PATH, document, openapi_path
from core.server.tus.protocol import TUS_COLLECTION_PATH
from tests.helpers.processes import PYTHON, REPO_ROOT
from tests.helpers.servers import GunicornServer
from tests.protection import schemathesis_hooks
from tests.server.conftest import settings_for


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return create_app({"upload_dir": tmp_path_factory.mktemp("openapi") / "uploads", "background_jobs": False})


def registered_operations(app: Flask) -> set[tuple[str, str]]:
    """Every route and method; HEAD only where it is a route of its own (tus), OPTIONS only for tus discovery."""
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[-1] != "static"
        for method in (rule.methods or set()) - {"OPTIONS", *(("HEAD",) if "GET" in (rule.methods or ()) else ())}
    } | {(TUS_COLLECTION_PATH, "options")}


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


# Every check schemathesis has; what the document cannot express is listed per operation, with
# the reason, in this configuration file.
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")


# Replies only a real, complete upload gives: the run must get this deep, not stop at 404s.
DEEP_REPLIES = {
    ("PUT", "/upload/{upload_id}/chunk/{index}", 201),
    ("PUT", "/upload/{upload_id}/chunk/{index}", 200),
    ("POST", "/upload/{upload_id}/finalize", 202),
    ("GET", "/upload/{upload_id}", 200),
    ("GET", "/uploads/{upload_id}/file", 200),
    ("DELETE", "/upload/{upload_id}", 200),
}


def test_upload_operations_link_the_upload_id_from_init_onwards() -> None:
    paths = document()["paths"]
    init_links = paths["/upload/init"]["post"]["responses"]["201"]["links"]
    operation_ids = {op["operationId"] for ops in paths.values() for op in ops.values() if "operationId" in op}

    assert {link["operationId"] for link in init_links.values()} == {
        "getUpload",
        "putChunk",
        "finalizeUpload",
        "abortUpload",
        "downloadFile",
    }
    assert all(link["parameters"]["upload_id"] == "$response.body#/upload_id" for link in init_links.values())
    linked = {link["operationId"] for ops in paths.values() for op in ops.values() for reply in op["responses"].values()
              for link in reply.get("links", {}).values()}  # fmt: skip
    assert linked <= operation_ids


def schemathesis(
    server: GunicornServer, workdir: Path, statuses: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """One ``st run`` against ``server`` with every check on; the replies it got are logged to ``statuses``."""
    argv = [
        str(Path(PYTHON).parent / "st"), "--config-file", str(CONFIG_FILE), "run", server.url + OPENAPI_PATH,
        "-H", f"Authorization: Bearer {server.admin_key}",
        "--checks", "all",
        # One worker: hypothesis parses lambdas with ast while describing strategies, and two threads
        # doing that at once hit CPython 3.11's "AST constructor recursion depth mismatch" SystemError.
        "--max-examples", "30", "--workers", "1",
        "--seed", "20251125", "--generation-database", "none", "--no-color", *options,
    ]  # fmt: skip
    hooks = {
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": schemathesis_hooks.__name__,
        schemathesis_hooks.KEY_VARIABLE: server.admin_key,
        schemathesis_hooks.STATUS_LOG_VARIABLE: str(statuses),
    }
    # cwd: schemathesis and hypothesis keep caches in the working directory, not in the checkout.
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=150, check=False, cwd=workdir, env={**os.environ, **hooks}
    )


@pytest.mark.gunicorn
@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    """Thousands of generated requests (positive and negative), every check, against every documented route, ~100 s.

    The stateful phase follows the document's links from init through chunks, finalize and download;
    ``schemathesis_hooks`` gives positive chunk PUTs the exact bytes the upload expects and sends a
    small upload's missing chunks before a positive finalize, so complete, verified uploads are common
    (~50 downloads of one in 60 s here, ~30 with both cores busy; without the fill, 0-8). It runs on a
    60 s budget of its own: sharing one with the other phases it got only what fuzzing left.
    """
    env = {"DASHBOARD_SSE_MAX_SECONDS": "0.5"}
    with GunicornServer(tmp_path / "uploads", workers=2, auth=True, env=env) as server:
        assert requests.get(server.url + OPENAPI_PATH, timeout=10).status_code == 200
        statuses = tmp_path / "statuses.log"
        phases = ("--phases", "examples,coverage,fuzzing", "--max-time", "40")
        stateless = schemathesis(server, tmp_path, statuses, *phases)
        stateful = schemathesis(server, tmp_path, statuses, "--phases", "stateful", "--max-time", "60")
        server_log = server.log()

    for run in (stateless, stateful):
        assert run.returncode == 0, run.stdout[-8000:]
    summary = stateless.stdout[stateless.stdout.rfind("Test cases:") :]
    generated = int(summary.split()[2])
    # ~1,000-2,000 in 40 s here, depending on the machine's load (every check adds requests of its
    # own): the floor only proves the run generated cases at all; DEEP_REPLIES checks its depth.
    assert generated >= 300, summary
    assert "Traceback" not in server_log
    replies = Counter(tuple(line.rsplit(" ", 2)) for line in statuses.read_text().splitlines())
    seen = {(method, path, int(status)) for method, path, status in replies}
    assert not {s for s in seen if s[2] >= 500}
    assert seen >= DEEP_REPLIES, sorted(DEEP_REPLIES - seen)


def test_documented_limits_are_the_servers_own(tmp_path: Path) -> None:
    """The schema's maxima come from the configuration the server enforces, not from a copy."""
    app = create_app({"upload_dir": tmp_path / "uploads", "background_jobs": False, "max_file_size": 12345})
    doc = app.test_client().get(OPENAPI_PATH).json
    init = doc["components"]["schemas"]["InitRequest"]["properties"]
    offset = next(p for p in doc["paths"]["/uploads"]["get"]["parameters"] if p["name"] == "offset")

    assert init["filesize"]["maximum"] == 12345
    assert offset["schema"]["maximum"] == 2**31
    assert init["metadata"]["nullable"] is True


@pytest.fixture
def open_app(tmp_path: Path) -> Flask:
    return create_app(settings_for(tmp_path / "uploads"))


@pytest.mark.parametrize(
    ("query", "status"),
    [("offset=2147483648", 200), ("offset=2147483649", 400), ("limit=500", 200), ("limit=501", 400)],
)
def test_page_parameters_are_accepted_exactly_up_to_the_documented_maximum(
    open_app: Flask, query: str, status: int
) -> None:
    assert open_app.test_client().get(f"/uploads?{query}").status_code == status


def test_a_null_metadata_is_accepted_as_documented(open_app: Flask) -> None:
    reply = open_app.test_client().post("/upload/init", json={"filename": "a.bag", "filesize": 1, "metadata": None})

    assert reply.status_code == 201, reply.json
