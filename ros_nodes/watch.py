"""``python -m ros_nodes.watch DIR``: upload every bag that ``ros2 bag record`` finishes in DIR, exactly once.

For robots that already record with ``ros2 bag record``: each finished bag
(a folder with ``metadata.yaml``, or a loose ``.mcap``/``.db3``) is uploaded
file by file, like the recorder's splits. State (the ledger and the upload
journal) lives in ``DIR/.watch`` unless ``--state-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from ros_nodes.cli import (
    EXIT_OK,
    EXIT_UPLOADS_UNFINISHED,
    EXIT_USAGE,
    add_upload_options,
    make_uploader,
    setup_logging,
    stop_on_signals,
)
from ros_nodes.core.handoff import Handoff
from ros_nodes.core.ledger import Ledger
from ros_nodes.core.watcher import FolderWatcher

log = logging.getLogger("ros_nodes.watch")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.watch", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder ros2 bag record writes into")
    add_upload_options(parser)
    parser.add_argument("--robot-id", default=os.environ.get("ROBOT_ID") or socket.gethostname())
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scans")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds a bag must stay unchanged")
    parser.add_argument("--priority", type=int, default=5, help="NetworkManager priority of the uploads")
    parser.add_argument("--state-dir", type=Path, help="ledger and upload journal (default DIR/.watch)")
    parser.add_argument("--once", action="store_true", help="scan until nothing changes, wait for uploads, exit")
    parser.add_argument("--wait-uploads", type=float, default=600.0, help="with --once: seconds to wait")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    if not args.upload_url:
        print("ros_nodes.watch: --upload-url is required (the key comes from UPLOAD_API_KEY)", file=sys.stderr)
        return EXIT_USAGE
    if not args.directory.is_dir():
        print(f"ros_nodes.watch: {args.directory} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    state_dir = args.state_dir or args.directory / ".watch"
    manager = make_uploader(args, state_dir / "uploads")
    ledger = Ledger(state_dir / "handoff.sqlite")
    handoff = Handoff(manager, ledger, priority=args.priority)
    handoff.listen(manager)
    watcher = FolderWatcher(args.directory, handoff, robot_id=args.robot_id, settle=args.settle)
    stop = stop_on_signals()
    handoff.reconcile(manager)
    manager.start()
    log.info("watching %s for finished bags (settle %.1f s)", args.directory, args.settle)
    exit_code = EXIT_OK
    try:
        while not stop.is_set():
            queued = watcher.scan()
            handoff.maybe_requeue()  # files not verified yet go back to the uploader (every few minutes)
            if args.once and not queued and watcher.settled():
                if not manager.wait(args.wait_uploads):
                    exit_code = EXIT_UPLOADS_UNFINISHED
                break
            stop.wait(args.interval)
    finally:
        manager.stop()
        ledger.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
