"""The kernel's view of a real loopback TCP connection: handed bytes are queued, acknowledged ones counted."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from core.client import wire
from tests.helpers.processes import wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO and SIOCOUTQ are Linux's")


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    with sender, receiver:
        yield sender, receiver


def fill(sock: socket.socket) -> int:
    """Hand bytes to ``sock`` until its send buffer is full; how many it took."""
    sock.setblocking(False)
    handed = 0
    try:
        while True:
            handed += sock.send(b"x" * 65536)
    except BlockingIOError:
        return handed


def test_bytes_a_peer_does_not_read_stay_unacknowledged_once_its_buffer_is_full(connection):
    sender, receiver = connection
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    handed = fill(sender)

    sample = wire.sample(sender)

    assert sample is not None
    assert sample.unacked > 0
    assert sample.acked - 1 + sample.unacked <= handed  # bytes_acked counts the SYN too; ACKs may land between reads
    assert sample.acked - 1 < handed


def test_bytes_the_peer_reads_become_acknowledged(connection):
    sender, receiver = connection
    sender.sendall(b"y" * 100_000)
    received = 0
    while received < 100_000:
        received += len(receiver.recv(65536))

    wait_until(lambda: (s := wire.sample(sender)) is not None and s.unacked == 0, 5, 0.01, "the ACKs")
    sample = wire.sample(sender)

    assert sample is not None
    assert sample.acked - 1 == 100_000
    assert sample.ack_age < 5


def test_a_closed_socket_has_no_sample(connection):
    sender, _ = connection
    sender.close()

    assert wire.sample(sender) is None
    assert wire.sample(None) is None
    wire.keep_probing(sender, True)  # harmless on a closed socket


def test_keepalive_probes_are_switched_on_and_off(connection):
    sender, _ = connection

    wire.keep_probing(sender, True)
    assert sender.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == wire.KEEPALIVE_INTERVAL
    wire.keep_probing(sender, False)
    assert sender.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
