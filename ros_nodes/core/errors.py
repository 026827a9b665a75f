"""Exception classes of the recording core."""

from __future__ import annotations


class RecorderError(Exception):
    """Base class of every error raised by ``ros_nodes``."""


class RecorderStateError(RecorderError):
    """A control call does not fit the recorder's current state (e.g. ``resume`` while stopped)."""


class InsufficientDiskError(RecorderError):
    """Free disk space is below the configured floor."""


class SalvageError(RecorderError):
    """A crashed split could not be recovered."""
