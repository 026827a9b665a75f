"""Per-request cost of the protection layers (API key check, rate limits, headers) against the same app without them.

``python -m bench.protection_overhead [--requests N] [--rounds R]``. In-process (Flask test
client), so the figures isolate the layers' own CPU from HTTP parsing; the route is a cheap
status lookup (404), the worst case for relative overhead. An 8 MiB chunk takes ~25 ms on this
machine, so the absolute difference is what matters there.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from core.server.app import create_app
from core.server.keys import key_store_for

VARIANTS = {
    "unprotected (baseline)": {"auth_enabled": False, "ratelimit_enabled": False},
    "auth": {"ratelimit_enabled": False},
    "auth + limits (memory://)": {},
}


def per_request_seconds(root: Path, overrides: dict[str, Any], requests: int, rounds: int) -> float:
    settings = {"upload_dir": root, "background_jobs": False, "ratelimit_status": "1000000000 per minute"}
    app = create_app({**settings, **overrides})
    headers = {"Authorization": "Bearer " + key_store_for(root).create("bench-robot").token}
    client = app.test_client()
    for _ in range(200):
        client.get("/upload/nope", headers=headers)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            client.get("/upload/nope", headers=headers)
        best = min(best, (time.perf_counter() - started) / requests)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    results = {}
    # One directory for the whole run: the apps' background threads keep writing into theirs.
    root = Path(tempfile.mkdtemp(prefix="bench-protection-"))
    for number, (name, overrides) in enumerate(VARIANTS.items()):
        results[name] = per_request_seconds(root / str(number), overrides, args.requests, args.rounds)
    baseline = results["unprotected (baseline)"]
    print("| variant | µs/request | ratio to baseline |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds * 1e6:.0f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
