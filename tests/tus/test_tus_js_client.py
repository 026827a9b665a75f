"""tus-js-client (npm) in Node against a real gunicorn, alone and behind nginx: resume, 460, parallel, deferred.

tus-js-client has no checksum support of its own: the 460 test adds an ``Upload-Checksum`` to each
PATCH from the client's ``onBeforeRequest`` hook (tests/tus/js/tus_client.mjs), over the exact
bytes the client sends, and the proxy then corrupts one of them on the wire.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tus.deployments import Deployment, deploy

pytestmark = [pytest.mark.gunicorn]

JS_DIR = Path(__file__).parent / "js"
SIZE = 3 * 1024 * 1024 + 123
MiB = 1024 * 1024


@pytest.fixture(scope="module", params=["gunicorn", pytest.param("nginx", marks=pytest.mark.nginx)])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if shutil.which("node") is None or not (JS_DIR / "node_modules" / "tus-js-client" / "package.json").exists():
        pytest.fail("tus-js-client is not installed: `make test` runs `npm ci` in tests/tus/js (needs node and npm)")
    with deploy(request.param, tmp_path_factory.mktemp(f"tus-js-{request.param}")) as running:
        yield running


@pytest.fixture
def bag(tmp_path: Path, deployment: Deployment) -> Path:
    deployment.reset_faults()
    path = tmp_path / "run_2.mcap"
    path.write_bytes(os.urandom(SIZE))
    return path


def run_client(deployment: Deployment, bag: Path, **options: Any) -> list[dict[str, Any]]:
    """One run of tus-js-client; its events (creating, created, resumed_from, success, error) in order."""
    sha256 = hashlib.sha256(bag.read_bytes()).hexdigest()
    config = {
        "endpoint": deployment.endpoint,
        "path": str(bag),
        "headers": deployment.auth,
        "metadata": {"filename": bag.name, "sha256": sha256},
        **options,
    }
    env = {**os.environ, **({"NODE_EXTRA_CA_CERTS": str(deployment.ca)} if deployment.ca else {})}
    done = subprocess.run(
        ["node", "tus_client.mjs", json.dumps(config)],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events, f"tus-js-client printed nothing; stderr:\n{done.stderr}"
    return events


def last(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matching = [event for event in events if event["event"] == name]
    assert matching, events
    return matching[-1]


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def assert_stored_verified(deployment: Deployment, url: str, bag: Path) -> None:
    status = deployment.wait_stored(upload_id(url))
    assert (status["state"], status["verified"], status["filename"]) == ("complete", True, bag.name)
    assert deployment.stored_sha256(upload_id(url)) == hashlib.sha256(bag.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", ["path", "buffer"])  # buffer: Node sends the PATCH body chunked
def test_an_interrupted_upload_resumes_from_the_servers_offset(deployment: Deployment, bag: Path, source: str) -> None:
    deployment.cut_after(SIZE // 2)
    first = run_client(deployment, bag, source=source)
    assert last(first, "error")["url"]
    url = last(first, "created")["url"]
    deployment.reset_faults()
    deployment.wait_patch_ended(upload_id(url))

    resumed = run_client(deployment, bag, source=source, uploadUrl=url)

    assert 0 < last(resumed, "resumed_from")["offset"] < SIZE
    assert last(resumed, "success")["url"] == url
    assert_stored_verified(deployment, url, bag)


def test_a_body_corrupted_on_the_way_is_refused_with_460(deployment: Deployment, bag: Path) -> None:
    deployment.flip.flip_after(64 * 1024)
    refused = run_client(deployment, bag, checksum=True, chunkSize=MiB)
    assert last(refused, "error")["status"] == 460
    url = last(refused, "created")["url"]

    resumed = run_client(deployment, bag, checksum=True, chunkSize=MiB, uploadUrl=url)

    assert last(resumed, "resumed_from")["offset"] == 0  # nothing of the refused PATCH was stored
    assert last(resumed, "success")["url"] == url
    assert_stored_verified(deployment, url, bag)


def test_parallel_uploads_are_concatenated_into_one_verified_file(deployment: Deployment, bag: Path) -> None:
    events = run_client(deployment, bag, parallelUploads=3)

    url = last(events, "success")["url"]
    assert_stored_verified(deployment, url, bag)


def test_a_stream_of_unknown_length_is_sent_with_a_deferred_length(deployment: Deployment, bag: Path) -> None:
    """uploadLengthDeferred: created with Upload-Defer-Length, the last PATCH carries Upload-Length."""
    events = run_client(deployment, bag, deferLength=True, chunkSize=MiB)

    assert last(events, "creating")["defer_length"] == "1"
    url = last(events, "success")["url"]
    assert_stored_verified(deployment, url, bag)
    assert deployment.status(upload_id(url))["filesize"] == SIZE
