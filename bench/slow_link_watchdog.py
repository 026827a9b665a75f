"""The stall watchdog on a 32 KB/s link (tc tbf in a network namespace, root only), stalled_timeout 5 s.

What counts as progress, per strategy:
- handed bytes (before): bytes handed to the socket; armed while the kernel drains and the reply is awaited;
- small send buffer: the same, with SO_SNDBUF 16 KiB so a write completes only as the link drains;
- wire (chosen): bytes the peer acknowledged (TCP_INFO), keepalive ACKs while the reply is awaited.

Printed: watchdog aborts, seconds, bytes handed to sockets relative to the file (1.00 = nothing
re-sent). A second table prints what the small send buffer costs on a fast link (loopback,
no cap): its throughput against the default buffer's in the same run.

    .venv/bin/python -m bench slow_link_watchdog -- --size 393216
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.client import transfer
from core.client.events import EventKind, UploadEvent
from core.network_manager import NetworkManager
from core.protocol import MiB
from tests.client.support import write_file
from tests.helpers import netns
from tests.helpers.servers import GunicornServer

SMALL_SNDBUF = 16 * 1024


@contextlib.contextmanager
def strategy(name: str) -> Iterator[None]:
    """Patch the client into one way of counting progress for the duration of a run."""
    sample, options = transfer.ConnectionSlot.sample, transfer._TrackedHTTPConnection.default_socket_options
    try:
        if name != "wire":
            transfer.ConnectionSlot.sample = lambda _self: None  # type: ignore[method-assign]
        if name == "small send buffer":
            extra = [(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)]
            transfer._TrackedHTTPConnection.default_socket_options = [*options, *extra]
        yield
    finally:
        transfer.ConnectionSlot.sample = sample  # type: ignore[method-assign]
        transfer._TrackedHTTPConnection.default_socket_options = options


def upload(server: GunicornServer, bag: Path, state: Path, stalled_timeout: float) -> tuple[int, float, float]:
    """(watchdog aborts, seconds, bytes handed / file size) of one upload in whole 8 MiB chunks."""
    manager = NetworkManager(upload_url=server.upload_url, state_dir=state)
    manager.stalled_timeout = stalled_timeout
    manager.backoff_initial, manager.backoff_max = 0.05, 0.5
    handed = 0
    aborts = 0

    def count(event: UploadEvent) -> None:
        nonlocal aborts
        aborts += event.kind is EventKind.RETRY and "watchdog" in (event.error or "")

    put_chunk = manager._client.put_chunk

    def counting_put(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal handed
        handed += len(args[2])
        return put_chunk(*args, **kwargs)

    manager._client.put_chunk = counting_put  # type: ignore[method-assign]
    manager.add_listener(count)
    started = time.monotonic()
    job_id = manager.add_upload(bag)
    manager.start()
    manager.wait(300, job_ids=[job_id])
    seconds = time.monotonic() - started
    manager.close()
    return aborts, seconds, handed / bag.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384 * 1024, help="bytes sent over the 32 KB/s link")
    parser.add_argument("--fast-size", type=int, default=256 * MiB, help="bytes sent over plain loopback")
    args = parser.parse_args(argv)
    names = ("handed bytes (before)", "small send buffer", "wire")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if netns.available():
            with netns.NetNamespace(rate="256kbit") as ns, GunicornServer(root / "slow", workers=2) as server:
                for n, name in enumerate(names):
                    bag = write_file(root / f"slow{n}.mcap", args.size)
                    with strategy(name):
                        aborts, seconds, ratio = upload(server, bag, root / f"state-slow{n}", 5.0)
                    print(f"32 KB/s  {name:24} {aborts:2d} aborts {seconds:6.1f} s {ratio:5.2f}x handed", flush=True)
                ns.set_rate("10gbit")
        with GunicornServer(root / "fast", workers=2) as server:
            base = None
            for n, name in enumerate(("handed bytes (before)", "small send buffer")):
                bag = write_file(root / f"fast{n}.mcap", args.fast_size)
                with strategy(name):
                    _, seconds, _ = upload(server, bag, root / f"state-fast{n}", 60.0)
                rate = args.fast_size / seconds / 1e6
                base = base or rate
                print(f"loopback {name:24} {rate:7.1f} MB/s  {rate / base:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
