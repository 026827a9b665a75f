"""HTTPS with a private CA, made exactly as DEPLOYMENT.md says; ``ca_bundle`` beats ``REQUESTS_CA_BUNDLE``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core.client.journal import JobState
from core.protocol import MiB
from tests.helpers.processes import REPO_ROOT, wait_until
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import make_tls_files

pytestmark = pytest.mark.gunicorn


def deployment_recipe() -> str:
    """The ```bash block of DEPLOYMENT.md that starts with ``# private-ca``."""
    text = (REPO_ROOT / "DEPLOYMENT.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith("# private-ca")]
    return block


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    made = subprocess.run(["bash", "-euo", "pipefail", "-c", deployment_recipe()], cwd=folder, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "SERVER_DNS": "localhost",
                                                       "SERVER_IP": "127.0.0.1"})  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "DNS:localhost, IP Address:127.0.0.1" in made.stdout
    return folder


@pytest.fixture(scope="module")
def https_server(private_ca: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module):
    monkeypatch_module.setenv("REQUESTS_CA_BUNDLE", str(private_ca / "ca.pem"))  # for the fixture's health check
    root = tmp_path_factory.mktemp("https")
    args = ["--certfile", str(private_ca / "server.pem"), "--keyfile", str(private_ca / "server.key")]
    with GunicornServer(root / "uploads", workers=1, scheme="https", extra_args=args) as srv:
        yield srv


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_ca_bundle_wins_over_requests_ca_bundle_with_a_certificate_made_as_documented(
    https_server, private_ca: Path, make_manager, make_file, tmp_path: Path, monkeypatch
):
    # Another program's CA bundle in the environment must not override the robot's setting.
    other = make_tls_files(tmp_path / "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca))
    monkeypatch.setenv("UPLOAD_CA_BUNDLE", str(private_ca / "ca.pem"))
    url = f"https://localhost:{https_server.port}/upload"
    manager = make_manager(url)
    manager.max_retries = 0
    job_id = manager.add_upload(make_file(MiB))
    manager.start()

    assert manager.wait(60, job_ids=[job_id])
    assert manager.job(job_id).state is JobState.COMPLETE


def test_without_the_private_ca_the_upload_is_blocked_not_failed(
    https_server, make_manager, make_file, tmp_path: Path, monkeypatch
):
    other = make_tls_files(tmp_path / "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca))
    manager = make_manager(f"https://localhost:{https_server.port}/upload", verify=str(other.ca))
    manager.max_retries = 0
    job_id = manager.add_upload(make_file(64 * 1024))
    manager.start()

    def parked() -> bool:
        return manager.job(job_id).state is JobState.PARKED

    wait_until(parked, 30, what="the upload to park")
    record = manager.job(job_id)
    assert record.blocked == "unreachable"
    assert "CERTIFICATE_VERIFY_FAILED" in (record.error or "")
