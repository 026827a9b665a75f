"""Schema migrations: `flask --app upload_server db upgrade` creates or upgrades the state database.

The fixture in tests/fixtures/legacy_state was made by the pre-SQLAlchemy server (four SQLite files,
no version table): the server refuses to start on it, naming the command, and after the upgrade
every upload, key, robot and command is still there and usable.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from core.checksums import ChunkChecksum
from core.protocol import HEADER_CHUNK_SHA256, ChunkAlgorithm
from core.server import db
from core.server.app import close_app, create_app
from core.server.robots import robot_store
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import PYTHON, REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "legacy_state"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
# The newest revision shipped: every upgrade must reach it, whatever revisions later issues add.
HEAD = max(p.name.split("_")[0] for p in (Path(db.__file__).parent / "migrations" / "versions").glob("0*.py"))


@pytest.fixture
def legacy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "uploads"
    shutil.copytree(FIXTURE / "upload_dir", target)
    return target


def upgrade_command(upload_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "db", "upgrade"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "UPLOAD_DIR": str(upload_dir), **env},
    )


def settings(upload_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {"upload_dir": upload_dir, "ratelimit_enabled": False, "background_jobs": False, **overrides}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {EXPECTED['keys'][name]}"}


def test_the_server_refuses_an_old_schema_and_names_the_upgrade_command(
    legacy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)

    with pytest.raises(db.SchemaOutdated, match="flask --app upload_server db upgrade"):
        create_app(settings(legacy_dir))


def test_upgrading_a_state_directory_of_the_previous_server_keeps_everything(legacy_dir: Path) -> None:
    result = upgrade_command(legacy_dir)
    assert result.returncode == 0, result.stderr
    assert f"upgraded from schema 0001 to {HEAD}" in result.stdout

    app = create_app(settings(legacy_dir))
    client = app.test_client()
    uploads = EXPECTED["uploads"]
    try:
        states = {
            name: client.get(f"/upload/{uid}", headers=bearer("robot1")).get_json()["state"]
            for name, uid in uploads.items()
        }
        assert states == {
            "complete_zstd": "complete",
            "complete_raw": "complete",
            "dedup": "complete",
            "uploading": "uploading",
            "aborted": "aborted",
        }
        for name, filename in (("complete_zstd", "compressible.bag"), ("dedup", "compressible.bag")):
            body = client.get(f"/uploads/{uploads[name]}/file", headers=bearer("robot1")).data
            assert hashlib.sha256(body).hexdigest() == EXPECTED["files"][filename]
        partial = client.get(f"/upload/{uploads['uploading']}", headers=bearer("robot1")).get_json()
        assert partial["received"] == [0, 2]

        # Keys: the robot's and the admin's still work, the revoked one still does not.
        assert client.get("/uploads", headers=bearer("ops")).get_json()["total"] == 5
        assert client.get("/uploads", headers=bearer("robot2_revoked")).status_code == 401

        # The robot and the operator's command came along (older than COMMAND_TTL now, so never delivered).
        assert [(c.action.value, c.state.value) for c in robot_store(app).recent_commands()] == [("split", "pending")]
        assert client.post("/robots/robot1/heartbeat", json={}, headers=bearer("robot1")).status_code == 200
        with db.read(app.extensions[db.EXTENSION]) as conn:
            robots = conn.execute(db.robots.select()).all()
            buckets = conn.execute(db.dashboard_buckets.select()).all()
        assert [r.robot_id for r in robots] == ["robot1"]
        assert robots[0].first_seen < robots[0].last_seen
        assert sum(b.requests for b in buckets) > 0
    finally:
        close_app(app)


def test_an_upload_begun_before_the_upgrade_finishes_after_it(legacy_dir: Path) -> None:
    assert upgrade_command(legacy_dir).returncode == 0
    app = create_app(settings(legacy_dir))
    client, uid = app.test_client(), EXPECTED["uploads"]["uploading"]
    try:
        # The part file holds chunks 0 and 2; the missing ones arrive now (their content is new bytes).
        for index in (1, 3):
            piece = bytes([index]) * 1024
            headers = {**bearer("robot1"), HEADER_CHUNK_SHA256: hashlib.sha256(piece).hexdigest()}
            assert client.put(f"/upload/{uid}/chunk/{index}", data=piece, headers=headers).status_code in (200, 201)
        status = client.get(f"/upload/{uid}", headers=bearer("robot1")).get_json()
        assert status["missing"] == []
    finally:
        close_app(app)


@pytest.mark.parametrize("algorithm", list(ChunkAlgorithm))
def test_chunks_acknowledged_before_the_upgrade_still_tell_a_resend_from_different_bytes(
    legacy_dir: Path, algorithm: ChunkAlgorithm
) -> None:
    """Receipts kept as bare sha256 hex became ``sha256:<hex>``; a resend under either checksum compares with them."""
    assert upgrade_command(legacy_dir).returncode == 0
    app = create_app(settings(legacy_dir))
    client, uid = app.test_client(), EXPECTED["uploads"]["uploading"]
    stored = (legacy_dir / "parts" / f"{uid}.part").read_bytes()[:1024]  # chunk 0, acknowledged before
    try:

        def resend(data: bytes) -> int:
            checksum = ChunkChecksum.of(algorithm, (data,))
            headers = {**bearer("robot1"), checksum.header: checksum.hexdigest}
            return client.put(f"/upload/{uid}/chunk/0", data=data, headers=headers).status_code

        assert resend(stored) == 200
        assert resend(bytes(1024)) == 409
    finally:
        close_app(app)


def test_upgrade_is_idempotent(legacy_dir: Path) -> None:
    assert upgrade_command(legacy_dir).returncode == 0

    again = upgrade_command(legacy_dir)

    assert again.returncode == 0, again.stderr
    assert f"already at schema {HEAD}" in again.stdout


@pytest.mark.postgres
def test_db_upgrade_creates_the_schema_in_an_empty_postgresql_database(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database()

    result = upgrade_command(tmp_path, STATE_STORE_URI=url)

    assert result.returncode == 0, result.stderr
    engine = db.open_engine(db.ServerConfig(upload_dir=tmp_path, state_store_uri=url))
    try:
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision(engine)
            assert set(inspect(conn).get_table_names()) >= {"uploads", "jobs", "api_keys", "robots"}
    finally:
        engine.dispose()
    assert not (tmp_path / db.STATE_FILE).exists()
