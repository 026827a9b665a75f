"""API keys: hashed at rest, constant-time checked, revocable at once, managed by `flask keys` — on both engines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from core.config import ServerConfig
from core.server import db
from core.server.identity import Identity
from core.server.keys import KeyStore, KeyStoreError, SQLKeyStore, key_store, open_key_store, parse_token


@pytest.fixture
def backend(state_store_uri: str) -> dict[str, Any]:
    """Settings that select the state database: none (SQLite in UPLOAD_DIR) or a fresh PostgreSQL database."""
    return {"state_store_uri": state_store_uri} if state_store_uri else {}


@pytest.fixture
def make_config(make_config: Callable[..., ServerConfig], backend: dict[str, Any]) -> Callable[..., ServerConfig]:
    return lambda **overrides: make_config(**{**backend, **overrides})


@pytest.fixture
def open_store(make_config: Callable[..., ServerConfig]) -> Iterator[Callable[[], KeyStore]]:
    """Opens the configured key store, as one more worker process or host would."""
    opened: list[KeyStore] = []

    def open_one() -> KeyStore:
        opened.append(open_key_store(make_config()))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def keys(open_store: Callable[[], KeyStore]) -> KeyStore:
    return open_store()


def stored_bytes(keys: KeyStore, tmp_path: Path) -> bytes:
    """Everything held at rest: the SQLite files, or every row of the key table in PostgreSQL."""
    assert isinstance(keys, SQLKeyStore)
    if keys.engine.dialect.name == "sqlite":
        return b"".join(p.read_bytes() for p in (tmp_path / "uploads").glob(f"{db.STATE_FILE}*"))
    with db.read(keys.engine) as conn:
        rows = conn.execute(select(db.api_keys)).all()
    return "\n".join(repr(tuple(row)) for row in rows).encode()


def test_open_key_store_follows_state_store_uri(keys: KeyStore, backend: dict[str, Any], tmp_path: Path) -> None:
    assert isinstance(keys, SQLKeyStore)
    assert keys.engine.dialect.name == ("postgresql" if backend else "sqlite")
    assert (tmp_path / "uploads" / db.STATE_FILE).exists() == (not backend)


def test_created_key_identifies_its_robot(keys: KeyStore) -> None:
    robot = keys.create("robot-7")
    admin = keys.create("ops", admin=True)

    assert keys.identity_for(robot.token) == Identity("robot-7", admin=False)
    assert keys.identity_for(admin.token) == Identity("ops", admin=True)


# token_urlsafe secrets may contain "_": one ending in "_r" once made a fragment of it ("r") the "secret".
AWKWARD_SECRET = "A" * 41 + "_r"


def _secret(token: str) -> str:
    parsed = parse_token(token)
    assert parsed is not None
    return parsed[1]


@pytest.mark.parametrize("secret", [None, AWKWARD_SECRET])
def test_key_secret_is_never_stored(
    keys: KeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    if secret is not None:
        monkeypatch.setattr("core.server.keys.secrets.token_urlsafe", lambda _n: secret)
    new = keys.create("robot-1")
    secret = _secret(new.token)

    stored = stored_bytes(keys, tmp_path)
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
        pytest.param(lambda t: "rbk_000000000000_" + _secret(t), id="unknown-key-id"),
        pytest.param(lambda t: t + "\x00", id="nul"),
        pytest.param(lambda t: "' OR 1=1 --", id="sql"),
        pytest.param(lambda t: "rbk_*_" + _secret(t), id="glob"),
    ],
)
def test_wrong_keys_identify_nobody(keys: KeyStore, mangle: Callable[[str], str]) -> None:
    token = keys.create("robot-1").token

    assert keys.identity_for(mangle(token)) is None


def test_revocation_is_seen_by_other_processes_without_restart(
    keys: KeyStore, open_store: Callable[[], KeyStore]
) -> None:
    other_worker = open_store()
    token = keys.create("robot-1").token
    assert other_worker.identity_for(token) is not None

    assert keys.revoke("robot-1") == 1

    assert other_worker.identity_for(token) is None
    assert other_worker.revoke("robot-1") == 0


def test_revoke_by_key_id_keeps_the_robots_other_key(keys: KeyStore) -> None:
    old = keys.create("robot-1")
    new = keys.create("robot-1")

    assert keys.revoke("robot-1", key_id=old.record.key_id) == 1

    assert keys.identity_for(old.token) is None
    assert keys.identity_for(new.token) == Identity("robot-1")
    assert [r.key_id for r in keys.list()] == [new.record.key_id]
    assert len(keys.list(include_revoked=True)) == 2


def test_revoking_another_names_key_id_revokes_nothing(keys: KeyStore) -> None:
    victim = keys.create("robot-1")
    keys.create("robot-2")

    assert keys.revoke("robot-2", key_id=victim.record.key_id) == 0

    assert keys.identity_for(victim.token) == Identity("robot-1")


def test_list_is_ordered_by_name_then_age_and_marks_revoked_keys(keys: KeyStore) -> None:
    first_b = keys.create("robot-b")
    a = keys.create("robot-a", admin=True)
    second_b = keys.create("robot-b")
    keys.revoke("robot-b", key_id=first_b.record.key_id)

    listed = keys.list(include_revoked=True)

    assert [r.key_id for r in listed] == [a.record.key_id, first_b.record.key_id, second_b.record.key_id]
    assert [(r.name, r.admin, r.active) for r in listed] == [
        ("robot-a", True, True),
        ("robot-b", False, False),
        ("robot-b", False, True),
    ]
    assert listed[1].revoked_at is not None
    assert listed[0].created_at == a.record.created_at


@pytest.mark.parametrize("name", ["", "anonymous", "../etc", "a b", "-lead", "x" * 65, "robot\x00", "ünï"])
def test_unusable_names_are_refused(keys: KeyStore, name: str) -> None:
    with pytest.raises(KeyStoreError):
        keys.create(name)


def test_the_app_reads_the_configured_store(make_app: Callable[..., Flask], backend: dict[str, Any]) -> None:
    app = make_app()
    store = key_store(app)

    assert isinstance(store, SQLKeyStore)
    assert store.engine.dialect.name == ("postgresql" if backend else "sqlite")


def test_cli_create_prints_the_key_alone_on_the_last_line(make_app: Callable[..., Flask], keys: KeyStore) -> None:
    runner = make_app().test_cli_runner()

    result = runner.invoke(args=["keys", "create", "robot-9", "--admin"])

    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert keys.identity_for(token) == Identity("robot-9", admin=True)


@pytest.mark.parametrize("secret", [None, AWKWARD_SECRET])
def test_cli_list_shows_names_and_never_secrets(
    make_app: Callable[..., Flask], keys: KeyStore, monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    if secret is not None:
        monkeypatch.setattr("core.server.keys.secrets.token_urlsafe", lambda _n: secret)
    token = keys.create("robot-1").token
    monkeypatch.undo()
    keys.create("ops", admin=True)

    result = make_app().test_cli_runner().invoke(args=["keys", "list"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("robot-1") and " robot " in line for line in lines)
    assert any(line.startswith("ops") and " admin " in line for line in lines)
    token_secret = _secret(token)
    assert len(token_secret) == 43
    assert token_secret not in result.output


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
