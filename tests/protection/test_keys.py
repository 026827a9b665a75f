"""API keys: hashed at rest, constant-time checked, revocable at once, managed by `flask keys`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from core.server.identity import Identity
from core.server.keys import KEYS_FILENAME, KeyStore, KeyStoreError


def test_created_key_identifies_its_robot(keys: KeyStore) -> None:
    robot = keys.create("robot-7")
    admin = keys.create("ops", admin=True)

    assert keys.identity_for(robot.token) == Identity("robot-7", admin=False)
    assert keys.identity_for(admin.token) == Identity("ops", admin=True)


def test_key_secret_is_never_stored(keys: KeyStore, tmp_path: Path) -> None:
    new = keys.create("robot-1")
    secret = new.token.rsplit("_", 1)[-1]

    stored = b"".join(p.read_bytes() for p in (tmp_path / "uploads").glob(f"{KEYS_FILENAME}*"))
    assert new.record.key_id.encode() in stored
    assert secret.encode() not in stored
    assert new.token.encode() not in stored


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), id="wrong-secret"),
        pytest.param(lambda t: t.replace("rbk_", "rbx_"), id="wrong-prefix"),
        pytest.param(lambda t: t[:-5], id="truncated"),
        pytest.param(lambda t: t + "x", id="too-long"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "rbk_000000000000_" + t.rsplit("_", 1)[-1], id="unknown-key-id"),
        pytest.param(lambda t: t + "\x00", id="nul"),
        pytest.param(lambda t: "' OR 1=1 --", id="sql"),
    ],
)
def test_wrong_keys_identify_nobody(keys: KeyStore, mangle: Callable[[str], str]) -> None:
    token = keys.create("robot-1").token

    assert keys.identity_for(mangle(token)) is None


def test_revocation_is_seen_by_other_processes_without_restart(keys: KeyStore, tmp_path: Path) -> None:
    other_worker = KeyStore(tmp_path / "uploads" / KEYS_FILENAME)
    token = keys.create("robot-1").token
    assert other_worker.identity_for(token) is not None

    assert keys.revoke("robot-1") == 1

    assert other_worker.identity_for(token) is None


def test_revoke_by_key_id_keeps_the_robots_other_key(keys: KeyStore) -> None:
    old = keys.create("robot-1")
    new = keys.create("robot-1")

    assert keys.revoke("robot-1", key_id=old.record.key_id) == 1

    assert keys.identity_for(old.token) is None
    assert keys.identity_for(new.token) == Identity("robot-1")
    assert [r.key_id for r in keys.list()] == [new.record.key_id]
    assert len(keys.list(include_revoked=True)) == 2


@pytest.mark.parametrize("name", ["", "anonymous", "../etc", "a b", "-lead", "x" * 65, "robot\x00", "ünï"])
def test_unusable_names_are_refused(keys: KeyStore, name: str) -> None:
    with pytest.raises(KeyStoreError):
        keys.create(name)


def test_cli_create_prints_the_key_alone_on_the_last_line(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    runner = make_app().test_cli_runner()

    result = runner.invoke(args=["keys", "create", "robot-9", "--admin"])

    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert keys.identity_for(token) == Identity("robot-9", admin=True)


def test_cli_list_shows_names_and_never_secrets(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    token = keys.create("robot-1").token
    keys.create("ops", admin=True)

    result = make_app().test_cli_runner().invoke(args=["keys", "list"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("robot-1") and " robot " in line for line in lines)
    assert any(line.startswith("ops") and " admin " in line for line in lines)
    assert token.rsplit("_", 1)[-1] not in result.output


def test_cli_revoke_disables_the_key(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    token = keys.create("robot-1").token
    runner = make_app().test_cli_runner()

    result = runner.invoke(args=["keys", "revoke", "robot-1"])

    assert result.exit_code == 0, result.output
    assert keys.identity_for(token) is None
    again = runner.invoke(args=["keys", "revoke", "robot-1"])
    assert again.exit_code != 0
    assert "no active key" in again.output


def test_cli_create_refuses_a_bad_name(make_app: Callable[..., Flask]) -> None:
    result = make_app().test_cli_runner().invoke(args=["keys", "create", "../x"])

    assert result.exit_code != 0
    assert "key name" in result.output
