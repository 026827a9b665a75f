"""Command line of the upload client: ``ros2-bag-upload upload|status|failed|retry|purge``.

Also ``python -m core.network_manager …`` from a checkout.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.client.events import UploadEvent
from core.client.journal import JobState, Journal
from core.client.retention import Retention
from core.client.status import blocked_label
from core.config import ClientConfig, ConfigError, parse_size
from core.protocol import BlockedReason

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNFINISHED = 3
EXIT_INTERRUPTED = 130


def _size(text: str) -> int:
    try:
        return parse_size("size", text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _metadata(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--meta expects KEY=VALUE, got {item!r}"
            raise argparse.ArgumentTypeError(msg)
        pairs[key] = value
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ros2-bag-upload",
        description="Upload bags to the upload server (resumable, verified) and inspect the upload journal.",
    )
    parser.add_argument("--state-dir", type=Path, help="journal folder (env NETWORK_MANAGER_STATE_DIR)")
    parser.add_argument("--log-level", default="WARNING", help="log level on stderr (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upload", help="upload files, wait until the server verified them")
    up.add_argument("files", nargs="+", type=Path, metavar="FILE")
    up.add_argument("--url", help="server upload URL, e.g. https://server:8080/upload (env UPLOAD_URL)")
    up.add_argument("--key", help="the robot's API key (env UPLOAD_API_KEY); never hard-code it")
    up.add_argument("--priority", type=int, default=5, help="lower number = uploaded first (default 5)")
    up.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata stored with the bag")
    up.add_argument("--bandwidth-limit", type=_size, help="bytes/s for all uploads, e.g. 1M (0 = unlimited)")
    up.add_argument("--chunk-size", type=_size, help="chunk size proposed to the server, e.g. 8M")
    up.add_argument("--max-concurrent", type=int, help="files uploaded at the same time")
    up.add_argument("--chunk-parallelism", type=int, help="chunks of one file sent in parallel")
    up.add_argument("--retention", choices=[r.value for r in Retention], help="after a verified upload")
    up.add_argument("--uploaded-dir", type=Path, help="where --retention move puts uploaded files")
    up.add_argument("--ca-bundle", help="CA file to trust for https (env UPLOAD_CA_BUNDLE)")
    up.add_argument("--upload-timeout", type=float, help="seconds per chunk (default 300)")
    up.add_argument("--init-timeout", type=float, help="seconds for init/finalize/status (default 10)")
    up.add_argument("--stalled-timeout", type=float, help="seconds without progress before a retry (default 60)")
    up.add_argument("--max-retries", type=int, help="retries per request before the upload is parked (default 5)")
    up.add_argument("--park-delay", type=float, help="seconds before a parked upload is retried (default 30)")
    up.add_argument("--timeout", type=float, help="give up waiting after this many seconds (the journal keeps them)")
    up.add_argument("--no-progress", action="store_true", help="no progress bar")

    st = sub.add_parser("status", help="list the persistent upload queue")
    st.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    fl = sub.add_parser("failed", help="list uploads that failed for good (file too large, name refused)")
    fl.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    for name, text in (("retry", "queue failed uploads again"), ("purge", "forget failed uploads (bags stay)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="job ids or unique prefixes")
        cmd.add_argument("--all", action="store_true", help="every failed upload")
    return parser


class _ProgressBar:
    """One tqdm bar over the total bytes of the files of this command, fed by upload events."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled, file=sys.stderr
        )
        self._sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self.jobs: set[str] = set()

    def __call__(self, event: UploadEvent) -> None:
        if event.job_id not in self.jobs:
            return
        with self._lock:
            delta = event.bytes_sent - self._sent.get(event.job_id, 0)
            self._sent[event.job_id] = event.bytes_sent
            self._bar.update(delta)
            label = event.state.value if not event.blocked else f"{event.state.value}, blocked: {event.blocked}"
            self._bar.set_postfix_str(f"{Path(event.path).name}: {label}", refresh=False)

    def close(self) -> None:
        self._bar.close()


def _upload(args: argparse.Namespace, config: ClientConfig) -> int:
    from core.network_manager import NetworkManager

    manager = NetworkManager(
        upload_url=args.url,
        api_key=args.key,
        state_dir=args.state_dir,
        max_concurrent_uploads=args.max_concurrent,
        bandwidth_limit=args.bandwidth_limit,
        chunk_size=args.chunk_size,
        chunk_parallelism=args.chunk_parallelism,
        retention=args.retention,
        uploaded_dir=args.uploaded_dir,
        verify=args.ca_bundle,
        config=config,
    )
    for name in ("upload_timeout", "init_timeout", "stalled_timeout", "max_retries", "park_delay"):
        value = getattr(args, name)
        if value is not None:
            setattr(manager, name, value)
    files = [f.resolve() for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    bar = _ProgressBar(sum(f.stat().st_size for f in files), enabled=not args.no_progress)
    manager.add_listener(bar)
    metadata = _metadata(args.meta)
    job_ids = [manager.add_upload(f, priority=args.priority, metadata=metadata or None) for f in files]
    bar.jobs.update(job_ids)
    manager.start()
    try:
        done = _wait(manager, job_ids, args.timeout)
    except KeyboardInterrupt:
        print("interrupted: stopping; unfinished uploads resume on the next run", file=sys.stderr)
        manager.close()
        bar.close()
        return EXIT_INTERRUPTED
    records = [manager.job(job_id) for job_id in job_ids]
    manager.close()
    bar.close()
    return _report(records, done)


def _wait(manager: Any, job_ids: list[str], timeout: float | None) -> bool:
    """Wait for the jobs; a command line also returns when every job waits for a human to fix the key.

    The robot's long-running uploader keeps retrying those (a key may be
    replaced); an interactive command says so and leaves them in the journal.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        if manager.wait(step, job_ids=job_ids):
            return True
        records = [manager.job(job_id) for job_id in job_ids]
        if all(r.state is JobState.PARKED and r.blocked == BlockedReason.AUTH.value for r in records):
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _report(records: list[Any], done: bool) -> int:
    failed = False
    for rec in records:
        line = f"{rec.state.value:10} {rec.path}"
        if rec.upload_id:
            line += f"  upload {rec.upload_id}"
        if rec.state is JobState.COMPLETE:
            line += f"  verified sha256 {rec.sha256}"
        elif rec.blocked and rec.state is not JobState.FAILED:
            line += f"  blocked: {rec.blocked} ({rec.error})"
        elif rec.error:
            line += f"  ({rec.error})"
        failed = failed or rec.state is JobState.FAILED
        print(line)
    if failed:
        return EXIT_FAILED
    return EXIT_OK if done else EXIT_UNFINISHED


def _status(args: argparse.Namespace, config: ClientConfig) -> int:
    state_dir = args.state_dir or config.resolved_state_dir()
    journal = Journal(state_dir)
    try:
        jobs = journal.jobs()
    finally:
        journal.close()
    if args.json:
        print(json.dumps([job.as_dict() for job in jobs], indent=2))
        return EXIT_OK
    if not jobs:
        print(f"no uploads in {state_dir}")
    for job in jobs:
        size = job.size or 0
        percent = 100.0 * job.bytes_sent / size if size else 0.0
        error = f"  ({job.error})" if job.error and not job.ended else ""
        if job.blocked and not job.ended:
            error = f"  [{blocked_label(job)}]{error}"
        print(f"{job.job_id[:12]}  {job.state.value:10} p{job.priority:<3} {percent:5.1f}%  {job.path}{error}")
    return EXIT_OK


def _failed_ids(wanted: Sequence[str], failed: Sequence[Any]) -> list[str]:
    """Full job ids for the ids or unique prefixes in ``wanted``; an unknown or ambiguous one is a usage error."""
    ids = []
    for prefix in wanted:
        matches = [rec.job_id for rec in failed if rec.job_id.startswith(prefix)]
        if len(matches) != 1:
            msg = f"{prefix!r} matches {len(matches)} failed uploads (see the `failed` command)"
            raise argparse.ArgumentTypeError(msg)
        ids.extend(matches)
    return ids


def _failed_command(args: argparse.Namespace, config: ClientConfig) -> int:
    """``failed`` lists, ``retry`` re-queues, ``purge`` forgets failed uploads (through the manager's API)."""
    from core.network_manager import NetworkManager

    manager = NetworkManager(state_dir=args.state_dir, config=config)
    try:
        failed = manager.failed()
        if args.command == "failed":
            if args.json:
                print(json.dumps([rec.as_dict() for rec in failed], indent=2))
            for rec in [] if args.json else failed:
                print(f"{rec.job_id[:12]}  {rec.path}  ({rec.error})")
            return EXIT_OK
        if not args.all and not args.job_ids:
            print(f"error: {args.command} needs JOB_IDs or --all", file=sys.stderr)
            return EXIT_USAGE
        ids = None if args.all else _failed_ids(args.job_ids, failed)
        done = manager.retry(ids) if args.command == "retry" else manager.purge(ids)
        verb = "queued again" if args.command == "retry" else "purged"
        print(f"{len(done)} failed upload(s) {verb}")
        return EXIT_OK
    finally:
        manager.close()


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        config = ClientConfig.from_env()
        if args.command == "upload":
            args.meta = args.meta or []
            signal.signal(signal.SIGTERM, _raise_interrupt)
            return _upload(args, config)
        if args.command in ("failed", "retry", "purge"):
            return _failed_command(args, config)
        return _status(args, config)
    except (ConfigError, argparse.ArgumentTypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
