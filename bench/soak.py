"""Soak: the real server on its defaults plus N simulated robots recording short splits for a given time.

``python -m bench.soak [--robots 5] [--minutes 30] [--split 5] [--nginx] [--json FILE] [--keep DIR]``

The server is gunicorn with the shipped ``gunicorn.conf.py`` and every setting at its default (keys
required, rate limits on), optionally behind the shipped nginx site with TLS. Each robot is
``python -m ros_nodes.simulate`` (the real recorder and the real ``NetworkManager``, its own key and
journal) splitting every ``--split`` seconds. While they run, the dashboard's state is sampled every
few seconds; at the end the harness reports splits recorded / uploaded / verified, the longest
upload queue, 4xx and 5xx replies by code (from gunicorn's access log), refused heartbeats, server
RSS, and the growth of the state database and of the stored files per hour. ``SoakReport.problems``
names every way the run fell short (any 429, 413 or 5xx; a closed split not verified; a robot
offline after its first heartbeat); ``tests/soak/test_soak.py`` runs a 3-minute version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from core.server.keys import key_store_for
from tests.helpers.nginx import NginxServer
from tests.helpers.processes import PYTHON, ManagedProcess
from tests.helpers.servers import GunicornServer
from tests.helpers.tls import make_tls_files

SAMPLE_SECONDS = 3.0
METADATA_FILE = "metadata.yaml"
# gunicorn's default access log format: … "METHOD PATH HTTP/1.1" STATUS SIZE …
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) ')
_HEARTBEAT = re.compile(r"^/robots/[^/]+/heartbeat")


@dataclass
class Sample:
    at: float
    online: dict[str, bool]
    queues: dict[str, int]
    rss_bytes: int
    state_bytes: int
    stored_bytes: int


@dataclass
class SoakReport:
    robots: int
    minutes: float
    split_seconds: float
    nginx: bool
    splits_recorded: int = 0
    splits_uploaded: int = 0
    splits_verified: int = 0
    unverified: list[str] = field(default_factory=list)
    longest_queue: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    heartbeat_rejections: dict[str, int] = field(default_factory=dict)
    requests_total: int = 0
    offline_samples: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    rss_start_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_end_mb: float = 0.0
    state_growth_mb_per_hour: float = 0.0
    state_end_mb: float = 0.0
    uploads_stored: int = 0
    storage_growth_mb_per_hour: float = 0.0
    robot_exit_codes: dict[str, int | None] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every way the run fell short of continuous operation; empty when it held."""
        found = [f"{count} x HTTP {code}" for code, count in sorted(self.status_counts.items()) if code[0] == "5"]
        found += [f"{self.status_counts[code]} x HTTP {code}" for code in ("413", "429") if code in self.status_counts]
        if self.unverified:
            found.append(f"{len(self.unverified)} closed split(s) not verified: {self.unverified[:5]}")
        if self.splits_recorded == 0:
            found.append("no split was recorded")
        found += [f"robot {robot} offline in {n} sample(s)" for robot, n in self.offline_samples.items() if n]
        found += [f"robot {robot} exited with {code}" for robot, code in self.robot_exit_codes.items() if code != 0]
        return found

    def markdown(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.status_counts.items()) if code >= "400") or "none"
        rejected = ", ".join(f"{code}: {n}" for code, n in sorted(self.heartbeat_rejections.items())) or "none"
        return "\n".join(
            [
                f"| robots x minutes (splits every {self.split_seconds:g} s) | "
                f"{self.robots} x {self.minutes:g}{' behind nginx' if self.nginx else ''} |",
                "|---|---|",
                f"| splits recorded / uploaded / verified | {self.splits_recorded} / {self.splits_uploaded} / "
                f"{self.splits_verified} |",
                f"| longest upload queue (files) | {self.longest_queue} |",
                f"| requests / 4xx and 5xx by code | {self.requests_total} / {codes} |",
                f"| heartbeats refused | {rejected} |",
                f"| robot samples offline | {sum(self.offline_samples.values())} of {self.samples * self.robots} |",
                f"| server RSS start / max / end (MB) | {self.rss_start_mb:.0f} / {self.rss_max_mb:.0f} / "
                f"{self.rss_end_mb:.0f} |",
                f"| state growth (MB/hour); at the end (MB, upload records) | {self.state_growth_mb_per_hour:.2f}; "
                f"{self.state_end_mb:.2f} for {self.uploads_stored} |",
                f"| stored files growth (MB/hour) | {self.storage_growth_mb_per_hour:.1f} |",
            ]
        )


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (gunicorn's master and workers)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
    return total


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) if path.exists() else 0


def state_bytes(upload_dir: Path) -> int:
    """The state databases' main files (not their WAL, which a checkpoint folds back in and truncates)."""
    return dir_bytes(upload_dir, "*.sqlite3")


class Sampler(threading.Thread):
    """Reads the dashboard's state document and the server's footprint every few seconds."""

    def __init__(self, url: str, headers: dict[str, str], verify: Any, server: GunicornServer) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.verify, self.server = url, headers, verify, server
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        session.verify = self.verify
        while not self.stopped.wait(SAMPLE_SECONDS):
            with contextlib.suppress(requests.RequestException, ValueError):
                doc = session.get(self.url + "/dashboard/api/state?limit=1", headers=self.headers, timeout=10).json()
                fleet = doc["fleet"]
                assert self.server.process is not None
                self.samples.append(
                    Sample(
                        at=time.time(),
                        online={r["robot_id"]: bool(r["online"]) for r in fleet},
                        queues={r["robot_id"]: int(r["queue_length"] or 0) for r in fleet},
                        rss_bytes=tree_rss(self.server.process.pid),
                        state_bytes=state_bytes(self.server.upload_dir),
                        stored_bytes=dir_bytes(self.server.upload_dir / "store"),
                    )
                )


def server_uploads(url: str, headers: dict[str, str], verify: Any) -> list[dict[str, Any]]:
    """Every upload record the server holds, through the paginated listing."""
    found: list[dict[str, Any]] = []
    while True:
        page = requests.get(
            f"{url}/uploads", params={"limit": 500, "offset": len(found)}, headers=headers, verify=verify, timeout=30
        ).json()
        found += page["uploads"]
        if len(found) >= page["total"] or not page["uploads"]:
            return found


def closed_splits(robot_dir: Path) -> list[str]:
    """Bags the recorder closed (a bag folder with its metadata.yaml), by name."""
    return sorted(p.parent.name for p in robot_dir.rglob(METADATA_FILE))


def access_counts(log: Path) -> tuple[Counter[str], Counter[str]]:
    """(replies by status, refused heartbeats by status) from gunicorn's access log."""
    statuses: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        match = _ACCESS.search(line)
        if match is None:
            continue
        statuses[match["status"]] += 1
        if match["status"] >= "400" and _HEARTBEAT.match(match["path"]):
            refused[match["status"]] += 1
    return statuses, refused


def robot_process(root: Path, name: str, token: str, upload_url: str, args: argparse.Namespace, ca: str) -> Any:
    directory = root / name
    argv = [
        PYTHON, "-m", "ros_nodes.simulate",
        "--robot-id", name, "--output", str(directory / "bags"), "--upload-url", upload_url,
        "--max-bag-duration", str(args.split), "--duration", str(args.minutes * 60),
        "--image-rate", str(args.image_rate), "--wait-uploads", "120", "--heartbeat", "5",
    ]  # fmt: skip
    env = {"UPLOAD_API_KEY": token, "NETWORK_MANAGER_STATE_DIR": str(directory / "journal"), "ROBOT_ID": name}
    if ca:
        env["REQUESTS_CA_BUNDLE"] = ca
    return ManagedProcess(argv, log_path=directory / "robot.log", env=env)


@contextlib.contextmanager
def front(server: GunicornServer, root: Path, use_nginx: bool) -> Iterator[tuple[str, Any, str]]:
    """(URL robots use, requests' verify, CA bundle path or ''): gunicorn itself, or the shipped nginx site."""
    if not use_nginx:
        yield server.url, True, ""
        return
    tls = make_tls_files(root / "tls")
    with NginxServer(root / "nginx", upstream_ports=[server.port], cert=tls.cert, key=tls.key) as nginx:
        yield nginx.url, str(tls.ca), str(tls.ca)


def run(args: argparse.Namespace, root: Path) -> SoakReport:
    report = SoakReport(args.robots, args.minutes, args.split, args.nginx)
    upload_dir = root / "uploads"
    env = {
        "RATELIMIT_ENABLED": "1",  # GunicornServer turns limits off for other tests; the soak runs the defaults
        "GUNICORN_ACCESS_LOG": str(root / "access.log"),
        **({"TRUSTED_PROXIES": "127.0.0.1"} if args.nginx else {}),
    }
    server = GunicornServer(upload_dir, auth=True, env=env, log_dir=root)
    keys = key_store_for(upload_dir)
    tokens = {f"soak-{n}": keys.create(f"soak-{n}").token for n in range(args.robots)}
    with server, front(server, root, args.nginx) as (url, verify, ca):
        admin = server.headers(server.admin_key)
        robots = {name: robot_process(root, name, token, url + "/upload", args, ca) for name, token in tokens.items()}
        sampler = Sampler(url, admin, verify, server)
        sampler.start()
        for robot in robots.values():
            robot.start()
        deadline = time.monotonic() + args.minutes * 60 + 240
        while any(r.alive() for r in robots.values()) and time.monotonic() < deadline:
            time.sleep(1)
        running_until = time.time()
        for name, robot in robots.items():
            robot.stop()
            report.robot_exit_codes[name] = robot.proc.returncode if robot.proc else None
        sampler.stopped.set()
        sampler.join(15)
        uploads = server_uploads(url, admin, verify)
    # The server has stopped: every WAL is checkpointed, so this is the state's real size.
    final = Sample(time.time(), {}, {}, 0, state_bytes(upload_dir), dir_bytes(upload_dir / "store"))
    _summarize(report, sampler.samples, uploads, root, running_until, final)
    return report


def _summarize(
    report: SoakReport,
    samples: list[Sample],
    uploads: list[dict[str, Any]],
    root: Path,
    running_until: float,
    final: Sample,
) -> None:
    by_bag: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for upload in uploads:
        bag = (upload.get("metadata") or {}).get("bag")
        if bag:
            by_bag.setdefault((upload["owner"], bag), []).append(upload)
    for name in report.robot_exit_codes:
        for bag in closed_splits(root / name / "bags"):
            report.splits_recorded += 1
            files = by_bag.get((name, bag), [])
            report.splits_uploaded += bool(files)
            parts = {(f.get("metadata") or {}).get("part") for f in files if f["state"] == "complete" and f["verified"]}
            if {"storage", "metadata"} <= parts:
                report.splits_verified += 1
            else:
                report.unverified.append(f"{name}/{bag}")
    statuses, refused = access_counts(root / "access.log")
    report.status_counts = dict(statuses)
    report.requests_total = sum(statuses.values())
    report.heartbeat_rejections = dict(refused)
    # A robot counts as online from its first heartbeat until the robots stopped recording.
    seen: set[str] = set()
    report.offline_samples = dict.fromkeys(report.robot_exit_codes, 0)
    for sample in samples:
        if sample.at > running_until - 5:
            break
        report.samples += 1
        for robot, online in sample.online.items():
            if online:
                seen.add(robot)
            elif robot in seen:
                report.offline_samples[robot] = report.offline_samples.get(robot, 0) + 1
        report.longest_queue = max([report.longest_queue, *sample.queues.values()])
    report.uploads_stored = len(uploads)
    report.state_end_mb = final.state_bytes / 1e6
    if samples:
        first, last = samples[0], samples[-1]
        hours = max((final.at - first.at) / 3600, 1e-9)
        report.rss_start_mb = first.rss_bytes / 1e6
        report.rss_end_mb = last.rss_bytes / 1e6
        report.rss_max_mb = max(s.rss_bytes for s in samples) / 1e6
        report.state_growth_mb_per_hour = (final.state_bytes - first.state_bytes) / 1e6 / hours
        report.storage_growth_mb_per_hour = (final.stored_bytes - first.stored_bytes) / 1e6 / hours


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--split", type=float, default=5.0, help="seconds per split (the recorder's default: 300)")
    parser.add_argument("--image-rate", type=float, default=10.0, help="camera Hz of each simulated robot")
    parser.add_argument("--nginx", action="store_true", help="robots reach the server through the shipped nginx")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> SoakReport:
    args = parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="soak-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report.markdown())
    problems = report.problems()
    print("problems: " + ("; ".join(problems) if problems else "none"))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return report


if __name__ == "__main__":
    main()
