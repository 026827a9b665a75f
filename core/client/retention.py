"""What happens to a bag on the robot after upload: keep, delete, or move to an "uploaded" folder.

Robots with small disks need the space back, but a bag may only go once the
server confirmed a verified copy whose sha256 equals the one computed here, and
only if the file did not change since it was hashed.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.checksums import hex_digests_equal
from core.client.errors import VerificationError

log = logging.getLogger(__name__)

UPLOADED_DIR_NAME = "uploaded"


class Retention(str, enum.Enum):
    KEEP = "keep"
    DELETE = "delete"
    MOVE = "move"


@dataclass(frozen=True)
class ServerConfirmation:
    """What the server's status said about the stored copy."""

    upload_id: str
    verified: bool
    sha256: str | None


@dataclass(frozen=True)
class LocalCopy:
    """What the client hashed: the file must still look the same before it is touched."""

    path: Path
    sha256: str
    size: int
    mtime_ns: int
    inode: int | None = None

    def unchanged(self) -> bool:
        """Same size, mtime and (when known) inode as when it was hashed; False once it is gone."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        same_inode = self.inode is None or stat.st_ino == self.inode
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns and same_inode


def confirm(confirmation: ServerConfirmation, local: LocalCopy) -> None:
    """Raise VerificationError unless the server verified a copy with our sha256."""
    if not confirmation.verified:
        msg = f"server did not verify upload {confirmation.upload_id} of {local.path}"
        raise VerificationError(msg)
    if not confirmation.sha256 or not hex_digests_equal(confirmation.sha256, local.sha256):
        msg = (
            f"server sha256 {confirmation.sha256} of upload {confirmation.upload_id} "
            f"differs from local {local.sha256} for {local.path}"
        )
        raise VerificationError(msg)


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    counter = 1
    while target.exists():
        target = directory / f"{Path(name).stem}.{counter}{Path(name).suffix}"
        counter += 1
    return target


def plan_retention(policy: Retention, local: LocalCopy, uploaded_dir: Path | None = None) -> Path | None:
    """Where the bag will be once ``policy`` acted (None: deleted); journaled *before* acting."""
    if policy is Retention.KEEP:
        return local.path
    if policy is Retention.DELETE:
        return None
    directory = uploaded_dir or local.path.parent / UPLOADED_DIR_NAME
    return _free_name(directory, local.path.name)


def finish_retention(policy: Retention, local: LocalCopy, target: Path | None, upload_id: str) -> Path | None:
    """Act on a verified bag; safe to repeat after a crash at any point (returns where the bag now is).

    A bag already deleted (or already moved to ``target``) counts as done; a bag
    that changed since it was hashed is kept where it is.
    """
    if policy is Retention.KEEP:
        return local.path
    if not local.path.exists():
        log.info("retention: %s already gone (verified upload %s)", local.path, upload_id)
        return target
    if not local.unchanged():
        log.warning("retention: %s changed since it was hashed; keeping it", local.path)
        return local.path
    if policy is Retention.DELETE or target is None:
        local.path.unlink(missing_ok=True)
        log.info("retention: deleted %s (verified upload %s)", local.path, upload_id)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    # A rename on one filesystem; across filesystems a copy that a repeat simply overwrites.
    shutil.move(os.fspath(local.path), os.fspath(target))
    log.info("retention: moved %s to %s (verified upload %s)", local.path, target, upload_id)
    return target


def apply_retention(
    policy: Retention, confirmation: ServerConfirmation, local: LocalCopy, uploaded_dir: Path | None = None
) -> Path | None:
    """Apply ``policy`` after ``confirm``; returns where the bag now is (None once deleted)."""
    confirm(confirmation, local)
    target = plan_retention(policy, local, uploaded_dir)
    return finish_retention(policy, local, target, confirmation.upload_id)
