"""Uploads over a link that resets every 1.5-3 s at 3 MB/s: whole chunks (8 MiB, or small ones) vs chunk pieces.

The fault proxy (tests/helpers/fault_proxy.py) throttles and cuts every connection at
seeded random intervals; each strategy sends the same file through a fresh proxy with
the same seed, against one real gunicorn. Printed per strategy: whether it finished
within the time cap, seconds, bytes the proxy carried to the server relative to the
file (1.00 = nothing re-sent), and the number of resets.

    .venv/bin/python -m bench flaky_link -- --size 50000000 --cap 90
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from core.network_manager import NetworkManager
from core.protocol import DEFAULT_CHUNK_SIZE, MiB
from tests.client.support import write_file
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.servers import GunicornServer

# name -> (chunk size proposed at init, chunk pieces allowed)
STRATEGIES = {
    "whole 8 MiB chunks (before)": (DEFAULT_CHUNK_SIZE, False),
    "whole 1 MiB chunks (adaptive size at init, best case)": (1 * MiB, False),
    "8 MiB chunks in adaptive pieces (chosen)": (DEFAULT_CHUNK_SIZE, True),
}


def run(server: GunicornServer, bag: Path, state: Path, chunk_size: int, pieces: bool, args: argparse.Namespace) -> str:
    with FaultProxy(server.port) as proxy:
        proxy.throttle = args.rate
        proxy.reset_every(1.5, 3.0, seed=args.seed)
        manager = NetworkManager(upload_url=proxy.url + "/upload", state_dir=state, chunk_size=chunk_size)
        # As in the tests: quick retries, and a parked upload tries again soon.
        manager.backoff_initial, manager.backoff_max = 0.05, 0.5
        manager.park_delay, manager.max_park_delay = 0.5, 2.0
        manager._client.sizer.pieces_supported = pieces  # the strategy under test
        started = time.monotonic()
        job_id = manager.add_upload(bag)
        manager.start()
        done = manager.wait(args.cap, job_ids=[job_id])
        seconds = time.monotonic() - started
        acked = manager.job(job_id).bytes_sent
        manager.close()
        size = bag.stat().st_size
        outcome = "complete" if done else f"{acked / size:.0%} acked at cap"
        return f"{outcome:>18} {seconds:6.1f} s  {proxy.bytes_up / size:5.2f}x carried  {proxy.drops:3d} resets"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000_000, help="bytes (decimal: 50 MB by default)")
    parser.add_argument("--rate", type=int, default=3_000_000, help="bytes/s through the proxy")
    parser.add_argument("--cap", type=float, default=90.0, help="seconds before a strategy is given up")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with GunicornServer(root / "uploads", workers=2) as server:
            for n, (name, (chunk_size, pieces)) in enumerate(STRATEGIES.items()):
                bag = write_file(root / f"bag{n}.mcap", args.size)  # a fresh file: no deduplication
                print(f"{name:55} {run(server, bag, root / f'state{n}', chunk_size, pieces, args)}", flush=True)


if __name__ == "__main__":
    main()
