"""Upload and finalize through gunicorn with chunks on S3 (SeaweedFS on this host) vs on local disk.

Run: ``.venv/bin/python -m bench blob_store -- --size-mib 256 --repeat 1`` (a few minutes).
For 1 and 4 parallel chunk streams it uploads the same file to our server twice,
once with the default local-disk store and once with ``BLOB_STORE_URI=s3://…`` on a
SeaweedFS started for the run, and prints MB/s until the last chunk is acknowledged
(MB = 10^6 B), the ratio S3/local, and finalize seconds per GiB (last ack to verified:
local = re-hash the part file and rename; S3 = complete the multipart upload and read
the object back once for its sha256). The local run is the baseline of the same run.
SeaweedFS shares the machine's CPUs with gunicorn and the client, so S3 numbers here
are a floor for a store on its own hosts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.server_throughput import APPS, MB, Payload, Result, cpu_seconds, gunicorn, upload
from core.protocol import MiB
from tests.helpers.processes import REPO_ROOT
from tests.helpers.seaweedfs import SeaweedFS


def measure(store: str, payload: Payload, streams: int, work: Path, seaweedfs: SeaweedFS) -> Result:
    env: dict[str, str] = {"COMPRESSION_THRESHOLD": str(2**62)}  # finalize = verify + store, no codec
    if store == "s3":
        env |= {**seaweedfs.env(), "BLOB_STORE_URI": f"s3://{seaweedfs.new_bucket()}/bench"}
    with gunicorn(APPS["ours"], work / f"{store}-{streams}", work, **env) as (url, process):
        before = cpu_seconds(process.pid)
        return upload(url, payload, streams, lambda: cpu_seconds(process.pid) - before, finalize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--repeat", type=int, default=1, help="runs per store and stream count (median shown)")
    args = parser.parse_args()

    payload = Payload(args.size_mib * MiB, args.chunk_mib * MiB)
    gib = payload.size / 2**30
    print(f"load average before: {os.getloadavg()[0]:.2f}; file {payload.size / MB:.0f} MB in {payload.count} chunks")
    print(f"{'streams':>7} {'local MB/s':>11} {'S3 MB/s':>8} {'ratio':>6} {'finalize s/GiB local':>21} {'S3':>6}")
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="blobs-", dir=out) as tmp, SeaweedFS(Path(tmp) / "seaweedfs") as s3:
        work = Path(tmp)
        for streams in (int(s) for s in args.streams.split(",")):
            runs: dict[str, list[Result]] = {"local": [], "s3": []}
            for _ in range(args.repeat):  # alternate, so drift in machine load hits both alike
                for store in runs:
                    runs[store].append(measure(store, payload, streams, work, s3))
            rate = {k: statistics.median(payload.size / MB / r.seconds for r in v) for k, v in runs.items()}
            final = {
                k: statistics.median(((r.verified_seconds or r.seconds) - r.seconds) / gib for r in v)
                for k, v in runs.items()
            }
            print(f"{streams:>7} {rate['local']:>11.0f} {rate['s3']:>8.0f} {rate['s3'] / rate['local']:>6.2f}"
                  f" {final['local']:>21.2f} {final['s3']:>6.2f}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
