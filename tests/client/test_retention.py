"""Retention after upload: a bag is deleted or moved only after the server confirmed a verified, matching copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.checksums import file_digests
from core.client.errors import VerificationError
from core.client.retention import LocalCopy, Retention, ServerConfirmation, apply_retention


@pytest.fixture
def bag(make_file) -> tuple[Path, LocalCopy]:
    path = make_file(4096)
    stat = path.stat()
    return path, LocalCopy(path, file_digests(path).sha256, stat.st_size, stat.st_mtime_ns)


@pytest.mark.parametrize("policy", list(Retention))
@pytest.mark.parametrize(
    "confirmation",
    [
        pytest.param(lambda sha: ServerConfirmation("u1", False, sha), id="not-verified"),
        pytest.param(lambda sha: ServerConfirmation("u1", True, "0" * 64), id="other-sha256"),
        pytest.param(lambda sha: ServerConfirmation("u1", True, None), id="no-sha256"),
    ],
)
def test_the_bag_is_kept_unless_the_server_verified_our_sha256(bag, policy: Retention, confirmation):
    path, local = bag

    with pytest.raises(VerificationError):
        apply_retention(policy, confirmation(local.sha256), local)

    assert path.exists()


def test_delete_removes_a_verified_bag(bag):
    path, local = bag

    assert apply_retention(Retention.DELETE, ServerConfirmation("u1", True, local.sha256.upper()), local) is None
    assert not path.exists()


def test_move_puts_a_verified_bag_in_the_uploaded_folder_without_overwriting(bag, tmp_path: Path):
    path, local = bag
    uploaded = tmp_path / "done"
    uploaded.mkdir()
    (uploaded / path.name).write_bytes(b"an older bag with the same name")

    target = apply_retention(Retention.MOVE, ServerConfirmation("u1", True, local.sha256), local, uploaded)

    assert target is not None
    assert target.parent == uploaded
    assert target.name != path.name
    assert not path.exists()
    assert (uploaded / path.name).read_bytes() == b"an older bag with the same name"


def test_keep_leaves_the_bag(bag):
    path, local = bag

    assert apply_retention(Retention.KEEP, ServerConfirmation("u1", True, local.sha256), local) == path
    assert path.exists()


def test_a_bag_that_changed_after_hashing_is_kept(bag):
    path, local = bag
    with path.open("ab") as fh:
        fh.write(b"more messages")

    assert apply_retention(Retention.DELETE, ServerConfirmation("u1", True, local.sha256), local) == path
    assert path.exists()
