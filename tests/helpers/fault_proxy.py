"""A user-space TCP fault proxy on 127.0.0.1: delay, throttle, black-hole and cut connections.

The kernel here has no ``netem`` qdisc, so link faults are made in user space:
the proxy sits between a client and a server and forwards bytes, and a test can
at any moment make it slow (``delay``, ``throttle``), silent (``pause``: nothing
is read any more, so the sender's socket buffers fill up exactly as on a
black-holed cellular link) or cut every connection (``drop_all``, or
``drop_after_bytes`` to cut in the middle of a request body, or ``reset_every``
for a link that drops every few seconds), or corrupt one byte on its way
(``flip_after``: the checksum a client sent no longer matches the body).

    with FaultProxy(server.port) as proxy:
        manager = NetworkManager(upload_url=proxy.url + "/upload")
        proxy.pause(); ...; proxy.resume()
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time

from tests.helpers.processes import free_port

_BUFFER = 64 * 1024


class _Link:
    """One accepted client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.pumps_done = 0

    def close(self) -> None:
        """Both directions ended: close normally so bytes still in kernel buffers are delivered."""
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()

    def cut_client(self) -> None:
        """RST the client, but let the server read every byte forwarded so far, then end of stream.

        A reset discards what the server's kernel received but the server had not read yet, so
        what a server keeps of a cut body depends on timing; this makes it exact.
        """
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(OSError):
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()

    def cut(self) -> None:
        """Close both ends with a RST (SO_LINGER 0), as a dropped mobile link looks to the peers."""
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``, with faults switchable while running.

    Attributes a test may set at any time: ``delay`` (seconds added before each
    forwarded piece), ``throttle`` (bytes/s per direction and connection; None =
    unlimited), ``drop_after_bytes`` (cut a connection once that many request
    bytes passed through it; None = never; ``keep_delivered``: the server still reads what was
    forwarded before the cut, then end of stream). ``flip_after(n)`` inverts one request byte, the
    one ``n`` bytes after the call over all connections. Counters: ``bytes_up`` (client to
    server), ``bytes_down``, ``connections``, ``drops``.
    """

    def __init__(
        self,
        target_port: int,
        *,
        port: int | None = None,
        target_host: str = "127.0.0.1",
        recv_buffer: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        # SO_RCVBUF of the client side: how much a paused proxy still accepts (and its kernel acknowledges).
        self.recv_buffer = recv_buffer
        self.port = port or free_port()
        self.delay = 0.0
        self.throttle: float | None = None
        self.drop_after_bytes: int | None = None
        self.keep_delivered = False
        self._flip_countdown: int | None = None
        self.flips = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.drops = 0
        self._running = threading.Event()
        self._stopping = threading.Event()
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults ------------------------------------------------------------------------
    def pause(self) -> None:
        """Black-hole: stop reading from either side; connections stay open and senders block."""
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    @property
    def paused(self) -> bool:
        return not self._forwarding.is_set()

    def reset_every(self, low: float, high: float, *, seed: int) -> None:
        """Cut every connection at random intervals in [low, high) s (reproducible by ``seed``), until stop()."""
        rng = random.Random(seed)

        def resets() -> None:
            while not self._stopping.wait(rng.uniform(low, high)):
                self.drop_all()

        threading.Thread(target=resets, name=f"fault-proxy-resets-{self.port}", daemon=True).start()

    def flip_after(self, count: int | None) -> None:
        """Invert the request byte ``count`` bytes from now (any connection), once; None cancels."""
        with self._lock:
            self._flip_countdown = count

    def drop_all(self) -> int:
        """Cut every open connection now; returns how many were cut."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()
        with self._lock:
            self.drops += len(links)
        return len(links)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.recv_buffer is not None:  # set before listen(): accepted sockets inherit it
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._running.set()
        self._thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._running.clear()
        self._forwarding.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self.drop_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- forwarding ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._running.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
                self.connections += 1
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(link, src, dst, up), daemon=True).start()

    def _piece_size(self) -> int:
        rate = self.throttle
        return _BUFFER if not rate else max(512, min(_BUFFER, int(rate / 20)))

    def _flipped(self, data: bytes) -> bytes:
        """``data`` with the byte the countdown of ``flip_after`` reaches inverted."""
        with self._lock:
            at = self._flip_countdown
            if at is None:
                return data
            if at >= len(data):
                self._flip_countdown = at - len(data)
                return data
            self._flip_countdown = None
            self.flips += 1
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        passed = 0
        try:
            while not link.closed.is_set() and self._running.is_set():
                if not self._forwarding.wait(0.05):
                    continue
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready or not self._forwarding.is_set():
                    continue
                data = src.recv(self._piece_size())
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if upstream and self.drop_after_bytes is not None and passed + len(data) > self.drop_after_bytes:
                    with self._lock:
                        self.drops += 1
                    link.cut_client() if self.keep_delivered else link.cut()
                    return
                if upstream and self._flip_countdown is not None:
                    data = self._flipped(data)
                if self.delay:
                    time.sleep(self.delay)
                if self.throttle:
                    time.sleep(len(data) / self.throttle)
                dst.sendall(data)
                passed += len(data)
                with self._lock:
                    if upstream:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
        except OSError:
            link.cut()
        finally:
            with self._lock:
                link.pumps_done += 1
                finished = link.closed.is_set() or link.pumps_done == 2
                if finished:
                    self._links.discard(link)
            if finished:
                link.close()
