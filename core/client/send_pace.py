"""How many bytes one ``send`` of a chunk body carries: small on a slow link, up to 1 MiB on a fast one.

A socket timeout bounds a whole ``sendall`` (Python >= 3.5), and urllib3 sends a
request body under the *connect* timeout (``init_timeout``, 10 s by default), so
a piece must drain within that time even when the kernel's send buffer is full:
on a 32 KB/s link 1 MiB pieces timed out while still moving
(``tests/client/test_slow_link.py``). Small pieces cost CPU on a fast link
though: each is a trip through http.client, the token bucket and the watchdog,
and 64 KiB pieces on loopback spent ~0.3 CPU s/GiB more than 1 MiB ones
(BENCHMARKS.md, item 1).

So the piece size follows the pace the peer's TCP acknowledges bytes at (the
kernel's count, ``core.client.wire``; handed bytes only say how fast the buffer
fills): a piece is at most ``TIMEOUT_SHARE`` of the send timeout at that pace.
The pace is judged over at least ``HISTORY`` seconds of sending or
``HISTORY_BYTES`` acknowledged, across requests: the kernel acknowledges whole
segments (64 KiB on loopback), so a shorter span that happens to hold one such
acknowledgement could see a 32 KB/s link as a fast one, while over 16 MiB one
segment is within 0.4 %. A link that slows by more than 1/``TIMEOUT_SHARE``
within one piece still times out; that request fails like any broken one (its
acknowledged pieces are kept, ``core.client.chunk_sizing``) and ``failed()``
starts the pace over from the smallest piece.

One pace is shared by every job and thread of a ``ServerClient``: it describes
the link, not a file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.client.wire import WireSample

MIN_PIECE = 64 * 1024
MAX_PIECE = 1024 * 1024
# A piece takes at most this share of the send timeout at the measured pace.
TIMEOUT_SHARE = 1 / 8
# Seconds of sending, or bytes acknowledged, the pace is judged over: each such span sets the piece size.
HISTORY = 1.0
HISTORY_BYTES = 16 * 1024 * 1024
# A connection is looked at no more often than this (two syscalls each time).
SAMPLE_EVERY = 0.01


class SendPace:
    """The piece size for the next ``send``, from the bytes acknowledged per second of sending seen last."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._piece = MIN_PIECE
        self._acked = 0
        self._seconds = 0.0

    @property
    def piece(self) -> int:
        return self._piece

    def failed(self) -> None:
        """A send broke or timed out: the next one starts small again, and so does the pace's history."""
        with self._lock:
            self._piece, self._acked, self._seconds = MIN_PIECE, 0, 0.0

    def meter(self, probe: Callable[[], WireSample | None], send_timeout: float) -> PaceMeter:
        """Counts one connection's acknowledgements while it sends a body, and adds them to this pace."""
        return PaceMeter(self, probe, send_timeout, self._clock)

    def add(self, acked: int, seconds: float, send_timeout: float) -> None:
        """``acked`` bytes were acknowledged during ``seconds`` of sending; each span of HISTORY sets the piece."""
        with self._lock:
            self._acked += acked
            self._seconds += seconds
            if (self._seconds < HISTORY and self._acked < HISTORY_BYTES) or self._seconds <= 0:
                return
            fits = int(self._acked / self._seconds * send_timeout * TIMEOUT_SHARE)
            self._piece = max(MIN_PIECE, min(MAX_PIECE, fits))
            self._acked, self._seconds = 0, 0.0


class PaceMeter:
    """One request's view: samples its connection at piece boundaries, at most once per SAMPLE_EVERY."""

    def __init__(
        self, pace: SendPace, probe: Callable[[], WireSample | None], send_timeout: float, clock: Callable[[], float]
    ) -> None:
        self._pace = pace
        self._probe = probe
        self._send_timeout = send_timeout
        self._clock = clock
        self._since: float | None = None
        self._acked = 0

    def piece(self) -> int:
        """The size of the next piece; called before each one is handed to the socket."""
        now = self._clock()
        if self._since is None or now - self._since >= SAMPLE_EVERY:
            self._sample(now)
        return self._pace.piece

    def finish(self) -> None:
        """The whole body was handed over: its last span counts too, however short.

        On loopback a chunk is handed over in less than SAMPLE_EVERY, so without this a request
        added nothing and the first ~250 MiB of an upload went in the smallest pieces.
        """
        self._sample(self._clock())

    def _sample(self, now: float) -> None:
        sample = self._probe()
        if sample is None:
            return
        if self._since is not None and sample.acked >= self._acked:
            self._pace.add(sample.acked - self._acked, now - self._since, self._send_timeout)
        self._since, self._acked = now, sample.acked
