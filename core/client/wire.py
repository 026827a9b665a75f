"""What the kernel knows about a TCP connection's progress: bytes the peer acknowledged, bytes still queued, last ACK.

Bytes handed to ``send`` are not progress: the kernel buffers megabytes of them
and drains the buffer at the link's pace, so a sender that counts them sees a
burst and then silence while the link is still busy (issue 17: a watchdog
counting them aborted moving transfers on a 32 KB/s link). The peer's TCP
acknowledgements are the progress that matters; Linux reports them per socket
in ``TCP_INFO`` (``tcpi_bytes_acked``, ``tcpi_last_ack_recv``) and ``SIOCOUTQ``
(bytes not yet acknowledged). Other systems return None, and callers fall back
to counting handed bytes.

While the reply is awaited nothing is sent, so nothing is acknowledged either;
``keep_probing`` makes the kernel send a keepalive every second, which a
reachable peer acknowledges: a silent link then shows as a growing ACK age.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
from dataclasses import dataclass

# struct tcp_info (linux/tcp.h): tcpi_last_ack_recv (u32 ms) at 56, tcpi_bytes_acked (u64) at 120.
_TCP_INFO_LENGTH = 136
_LAST_ACK_RECV = struct.Struct("=I")
_BYTES_ACKED = struct.Struct("=Q")
_LAST_ACK_RECV_OFFSET = 56
_BYTES_ACKED_OFFSET = 120
# Keepalive probes while a reply is awaited: the minimum the kernel allows (seconds).
KEEPALIVE_INTERVAL = 1
_KEEPALIVE_COUNT = 120  # the kernel gives up after this many unanswered probes; the watchdog acts long before


@dataclass(frozen=True)
class WireSample:
    """One look at a connection: ``acked`` only grows while the peer receives; ``ack_age`` grows while it is silent."""

    acked: int  # bytes of this connection the peer's TCP acknowledged, since it was opened
    unacked: int  # bytes handed to the socket and not acknowledged yet (queued or in flight)
    ack_age: float  # seconds since the last ACK from the peer


def sample(sock: socket.socket | None) -> WireSample | None:
    """The kernel's view of ``sock``; None when it is closed or the system does not tell."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if sock is None or tcp_info is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LENGTH)
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_LENGTH:
        return None
    (acked,) = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)
    (age_ms,) = _LAST_ACK_RECV.unpack_from(info, _LAST_ACK_RECV_OFFSET)
    (unacked,) = struct.unpack("=i", queued)
    return WireSample(acked=acked, unacked=unacked, ack_age=age_ms / 1000.0)


def keep_probing(sock: socket.socket | None, on: bool) -> None:
    """Keepalive probes every KEEPALIVE_INTERVAL seconds of silence (``on``), or the system default (off)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if on else 0)
        if on:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_COUNT)
