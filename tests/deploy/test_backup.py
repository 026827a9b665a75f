"""Backups: a consistent snapshot of a live storage root, restored byte for byte into an empty directory."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from core.config import ServerConfig
from core.protocol import MiB
from core.server import backup
from core.server.backup import MANIFEST, BackupError, Manifest, create_backup, restore_backup, snapshots
from tests.deploy.client import UploadClient, read_chunk, write_source
from tests.helpers.processes import PYTHON, REPO_ROOT
from tests.helpers.servers import GunicornServer


def make_storage_root(root: Path) -> dict[str, bytes]:
    """A storage root shaped like the server's: two WAL databases, stored files, a sparse part file, locks."""
    (root / "store" / "ab").mkdir(parents=True)
    (root / "parts").mkdir()
    (root / "locks" / "ab").mkdir(parents=True)
    (root / "locks" / "ab" / "0.lock").write_bytes(b"")
    files = {
        "store/ab/ab" + "0" * 30 + ".zst": os.urandom(300_000),
        "store/ab/ab" + "0" * 30 + ".json": b'{"original_name": "run.mcap"}',
        ".secret_key": b"k" * 32,
    }
    for relative, data in files.items():
        (root / relative).write_bytes(data)
    part = root / "parts" / ("cd" + "0" * 30 + ".part")
    with part.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: only two chunks were received
        f.seek(8 * 1024 * 1024)
        chunk = os.urandom(1024 * 1024)
        f.write(chunk)
    files["parts/" + part.name] = part.read_bytes()
    for name in ("state.sqlite3", "robots.sqlite3"):
        db = sqlite3.connect(root / name)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [("row",)] * 100)
        db.commit()
        db.close()
    return files


def rows(db_path: Path) -> int:
    db = sqlite3.connect(db_path)
    try:
        return int(db.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        db.close()


def test_restore_reproduces_every_file_and_database(tmp_path: Path) -> None:
    root, dest, restored = tmp_path / "uploads", tmp_path / "backup", tmp_path / "restored"
    files = make_storage_root(root)

    manifest = create_backup(root, dest)
    restore_backup(dest, restored)

    for relative, data in files.items():
        assert (restored / relative).read_bytes() == data, relative
    assert rows(restored / "state.sqlite3") == 100
    assert rows(restored / "robots.sqlite3") == 100
    assert not (restored / "locks").exists()
    assert {e.path for e in manifest.entries} == {*files, "state.sqlite3", "robots.sqlite3"}


def test_part_files_stay_sparse_in_the_backup(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    files = make_storage_root(root)
    create_backup(root, tmp_path / "backup")
    part = next(p for p in files if p.startswith("parts/"))
    copy = (tmp_path / "backup" / part).stat()
    assert copy.st_size == 64 * 1024 * 1024
    assert copy.st_blocks * 512 < 4 * 1024 * 1024


def test_snapshot_is_consistent_while_the_database_is_written(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    make_storage_root(root)
    stop = threading.Event()

    def writer() -> None:
        db = sqlite3.connect(root / "state.sqlite3")
        while not stop.is_set():
            db.execute("INSERT INTO t (v) VALUES ('more')")
            db.commit()
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        create_backup(root, tmp_path / "backup")
    finally:
        stop.set()
        thread.join()
    restore_backup(tmp_path / "backup", tmp_path / "restored")
    db = sqlite3.connect(tmp_path / "restored" / "state.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert rows(tmp_path / "restored" / "state.sqlite3") >= 100


def test_a_corrupted_backup_file_stops_the_restore_naming_it(tmp_path: Path) -> None:
    root, dest = tmp_path / "uploads", tmp_path / "backup"
    files = make_storage_root(root)
    create_backup(root, dest)
    stored = next(p for p in files if p.endswith(".zst"))
    with (dest / stored).open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff")

    with pytest.raises(BackupError, match=stored.replace(".", r"\.")):
        restore_backup(dest, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_missing_backup_file_stops_the_restore(tmp_path: Path) -> None:
    root, dest = tmp_path / "uploads", tmp_path / "backup"
    make_storage_root(root)
    create_backup(root, dest)
    (dest / ".secret_key").unlink()
    with pytest.raises(BackupError, match=r"missing \.secret_key"):
        restore_backup(dest, tmp_path / "restored")


def test_restore_refuses_a_non_empty_target(tmp_path: Path) -> None:
    root, dest = tmp_path / "uploads", tmp_path / "backup"
    make_storage_root(root)
    create_backup(root, dest)
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(dest, root)


def test_create_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    make_storage_root(root)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "x").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        create_backup(root, tmp_path / "backup")


def cli(root: Path) -> FlaskCliRunner:
    app = Flask("backup-test")
    backup.init_app(app, ServerConfig(upload_dir=root))
    return app.test_cli_runner()


def test_timestamped_backups_hard_link_unchanged_stored_files_and_keep_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, parent = tmp_path / "uploads", tmp_path / "backups"
    files = make_storage_root(root)
    runner = cli(root)
    created = []
    for stamp in (1_700_000_000.0, 1_700_000_100.0, 1_700_000_200.0):
        monkeypatch.setattr(backup, "timestamped", lambda p, t=stamp: backup.snapshot_path(p, t))
        result = runner.invoke(
            args=["backup", "create", "--timestamped", "--keep", "2", str(parent)], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        created.append(Path(result.output.strip().splitlines()[-1]))

    assert snapshots(parent) == created[1:]
    stored = next(p for p in files if p.endswith(".zst"))
    assert (created[1] / stored).stat().st_ino == (created[2] / stored).stat().st_ino
    assert runner.invoke(args=["backup", "verify", str(created[2])]).exit_code == 0


def test_cli_restore_into_upload_dir_reports_verification(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    make_storage_root(root)
    create_backup(root, tmp_path / "backup")
    runner = cli(tmp_path / "fresh")
    result = runner.invoke(args=["backup", "restore", str(tmp_path / "backup")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "all verified" in result.output
    assert Manifest.load(tmp_path / "backup" / MANIFEST).entries


def test_cli_reports_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    runner = cli(tmp_path / "missing")
    result = runner.invoke(args=["backup", "create", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def flask_cli(upload_dir: Path, *args: str, state_store_uri: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "flask", "--app", "upload_server", "backup", *args],
        cwd=REPO_ROOT,
        env={"UPLOAD_DIR": str(upload_dir), "PATH": "/usr/bin:/bin", "STATE_STORE_URI": state_store_uri},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.gunicorn
def test_backup_of_a_live_server_restores_into_a_working_server(
    tmp_path: Path, state_store_uri: str, request: pytest.FixtureRequest
) -> None:
    """Completed uploads download byte-identical from the restored copy; an unfinished one resumes there.

    With PostgreSQL the state goes through pg_dump and pg_restore into a second, empty database.
    """
    target_uri = request.getfixturevalue("postgres").create_database() if state_store_uri else ""
    stored = [write_source(tmp_path / "a.mcap", 9 * MiB, compressible=True), write_source(tmp_path / "b.mcap", 3 * MiB)]
    unfinished = write_source(tmp_path / "c.mcap", 4 * MiB)
    with GunicornServer(tmp_path / "uploads", workers=2, env={"STATE_STORE_URI": state_store_uri}) as server:
        client = UploadClient(server.url)
        done = [client.upload(src, MiB, compression=i == 0) for i, src in enumerate(stored)]
        for upload_id in done:
            client.finalize(upload_id)
        partial = client.upload(unfinished, MiB, order=[0, 2])
        created = flask_cli(tmp_path / "uploads", "create", str(tmp_path / "backup"), state_store_uri=state_store_uri)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1] == str(tmp_path / "backup")

    restored = flask_cli(
        tmp_path / "unused", "restore", str(tmp_path / "backup"), "--upload-dir", str(tmp_path / "r"),
        state_store_uri=target_uri,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "all verified" in restored.stdout

    with GunicornServer(tmp_path / "r", workers=1, env={"STATE_STORE_URI": target_uri}) as server:
        client = UploadClient(server.url)
        for upload_id, src in zip(done, stored, strict=True):
            assert client.status(upload_id)["state"] == "complete"
            assert client.downloaded_sha256(upload_id) == src.sha256
        assert sorted(client.status(partial)["received"]) == [0, 2]
        for index in (1, 3):
            client.put_chunk(partial, index, read_chunk(unfinished, MiB, index))
        client.finalize(partial)
        assert client.downloaded_sha256(partial) == unfinished.sha256
