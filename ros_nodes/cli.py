"""Command-line pieces shared by the recorder entry points: recorder options, the uploader, heartbeats, signals."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import (
    RECORDER_COMPRESSION_MODES,
    RECORDER_COMPRESSIONS,
    RECORDER_STORAGES,
    ConfigError,
    RecorderConfig,
    parse_size,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from core.heartbeat import CommandHandler, HeartbeatReporter, StatusSource
    from core.protocol import RobotAction
    from ros_nodes.core.recorder import Recorder

log = logging.getLogger(__name__)

# Exit statuses of the ``python -m ros_nodes.*`` commands.
EXIT_OK = 0
EXIT_UPLOADS_UNFINISHED = 1
EXIT_USAGE = 2
EXIT_DISK = 3


def add_recorder_options(parser: argparse.ArgumentParser) -> None:
    """Options named like ``ros2 bag record``'s; unset ones fall back to the RECORDER_* environment."""
    group = parser.add_argument_group("recording (defaults: RECORDER_* environment, see README)")
    group.add_argument("--output", "-o", type=Path, help="folder to write bags into")
    group.add_argument("--robot-id", help="robot name stamped on bags and uploads (ROBOT_ID)")
    group.add_argument("--storage", "-s", choices=RECORDER_STORAGES)
    group.add_argument("--bag-version", type=int, choices=(8, 9), help="8 for Humble readers, 9 for Jazzy+")
    group.add_argument("--max-bag-size", "-b", type=_size, metavar="BYTES", help="split size (0: none)")
    group.add_argument("--max-bag-duration", "-d", type=float, metavar="SECONDS", help="split duration (0: none)")
    group.add_argument("--compression-format", choices=RECORDER_COMPRESSIONS, dest="compression")
    group.add_argument("--compression-mode", choices=RECORDER_COMPRESSION_MODES)
    group.add_argument("--topics", nargs="*", default=None, help="explicit topics (none and no regex: all)")
    group.add_argument("--regex", "-e", dest="include_regex", help="also record topics matching this regex")
    group.add_argument("--exclude-regex", "-x", dest="exclude_regex", help="never record topics matching this")
    group.add_argument("--min-free-disk", type=_size, metavar="BYTES", help="free-space floor")
    group.add_argument("--keep-bags", type=int, help="keep at most N bags locally (verified ones are deleted)")
    group.add_argument("--keep-bytes", type=_size, help="keep at most N bytes of bags locally")
    add_upload_options(group)
    group.add_argument(
        "--heartbeat", type=float, default=5.0, metavar="SECONDS", help="status heartbeat interval (0: none)"
    )
    group.add_argument(
        "--heartbeat-url",
        help="server (or …/upload) URL for status heartbeats when they take another path than uploads "
        "(default: --upload-url); key from UPLOAD_API_KEY",
    )


def add_upload_options(group: argparse._ActionsContainer) -> None:
    """Where and how finished bags are uploaded (shared by every entry point that uploads)."""
    group.add_argument("--upload-url", help="server upload URL (…/upload); key from UPLOAD_API_KEY")
    group.add_argument(
        "--stalled-timeout",
        type=float,
        metavar="SECONDS",
        help="retry a chunk that made no progress for this long (default: the NetworkManager's, 60)",
    )


def _size(raw: str) -> int:
    try:
        return parse_size("size", raw)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


_OPTION_FIELDS = {
    "output": "output_dir",
    "robot_id": "robot_id",
    "storage": "storage",
    "bag_version": "bag_version",
    "max_bag_size": "max_bag_size",
    "max_bag_duration": "max_bag_duration",
    "compression": "compression",
    "compression_mode": "compression_mode",
    "include_regex": "include_regex",
    "exclude_regex": "exclude_regex",
    "min_free_disk": "min_free_disk",
    "keep_bags": "keep_bags",
    "keep_bytes": "keep_bytes",
}


def config_from_args(args: argparse.Namespace) -> RecorderConfig:
    overrides: dict[str, Any] = {
        field: getattr(args, option) for option, field in _OPTION_FIELDS.items() if getattr(args, option) is not None
    }
    if args.topics is not None:
        overrides["topics"] = tuple(args.topics)
    return RecorderConfig.from_env(**overrides)


def make_uploader(args: argparse.Namespace, state_dir: Path) -> Any:
    """A NetworkManager journaling in ``state_dir`` for ``--upload-url``, or None when only recording."""
    if not args.upload_url:
        return None
    from core.network_manager import NetworkManager  # lazy: only robots that upload need the client

    manager = NetworkManager(upload_url=args.upload_url, api_key=os.environ.get("UPLOAD_API_KEY"), state_dir=state_dir)
    if args.stalled_timeout is not None:
        manager.stalled_timeout = args.stalled_timeout
    return manager


def make_recorder_uploader(args: argparse.Namespace, config: RecorderConfig) -> Any:
    """The uploader of a recording entry point, journaling beside its bags so any entry point resumes the queue."""
    from ros_nodes.core.recorder import STATE_DIR  # lazy: the watcher uses this module without the recorder

    return make_uploader(args, config.output_dir / STATE_DIR / "uploads")


def status_sources(recorder: Recorder, manager: Any) -> dict[str, StatusSource]:
    """What a heartbeat reports: the recorder's snapshot, and the upload queue when this robot uploads."""
    sources: dict[str, StatusSource] = {"recorder": lambda: recorder.status().to_dict()}
    if manager is not None:
        # Bounded: active uploads plus a recent window, whatever the journal's history (server cap 64 KiB).
        sources["uploads"] = getattr(manager, "heartbeat_status", manager.status)
    return sources


def recorder_commands(recorder: Recorder) -> CommandHandler:
    """Runs an operator's command on the recorder; the acknowledgement tells the operator the new state."""

    def run(action: RobotAction, _args: Mapping[str, Any]) -> str:
        recorder.command(action)
        return recorder.status().state

    return run


def make_heartbeat(args: argparse.Namespace, recorder: Recorder, manager: Any) -> HeartbeatReporter | None:
    """The robot's heartbeat (not started yet) so it shows on the dashboard and takes commands, or None.

    Every recorder entry point (the rclpy node, the simulator) uses this, so a real
    robot reports exactly what the demo robot does. Without a server URL, or with
    ``--heartbeat 0``, the robot records (and uploads) without reporting.
    """
    url = args.heartbeat_url or args.upload_url
    if not url or args.heartbeat <= 0:
        return None
    from core.heartbeat import HeartbeatReporter  # lazy: only robots that report need requests

    return HeartbeatReporter(
        url,
        recorder.config.robot_id,
        sources=status_sources(recorder, manager),
        handler=recorder_commands(recorder),
        interval=args.heartbeat,
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM, so the main loop ends and closes the open split cleanly."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
