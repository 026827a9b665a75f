"""Stall detection: abort a transfer that made no byte of progress on the wire for ``stalled_timeout`` seconds.

A read timeout only fires when a single ``recv`` waits too long; a black-holed
link can instead block a ``send`` on a full socket buffer, or trickle one byte
per minute. The watchdog looks at what matters, the time since the peer last
acknowledged a byte (``core.client.wire``), never bytes merely queued in the
kernel, and also enforces an overall per-chunk deadline (``upload_timeout``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from core.client.wire import KEEPALIVE_INTERVAL, WireSample

log = logging.getLogger(__name__)

# A peer whose receive window is back to this fraction of its largest has read what it acknowledged.
_WINDOW_OPEN = 0.75


class Verdict(str, enum.Enum):
    STALLED = "stalled"
    DEADLINE = "deadline"


class WireProbe(Protocol):
    """The kernel's view of the connection a watched transfer uses (``core.client.wire``)."""

    def sample(self) -> WireSample | None: ...

    def keep_probing(self, on: bool) -> None: ...


class Watch:
    """One watched transfer.

    Progress is what the wire shows when a ``probe`` can see it: bytes the peer
    acknowledged, and once the whole body is acknowledged and the reply is awaited,
    ACKs of keepalive probes (a reachable peer answers them within a second) from a
    peer that has read those bytes (its receive window is open again). Bytes
    handed to the socket (``handed``) count only while the wire cannot be seen; time
    spent waiting on the sender's own bandwidth limit always counts (``progress``).
    """

    def __init__(
        self,
        name: str,
        abort: Callable[[], None],
        stall_after: float,
        deadline: float | None,
        clock: Callable[[], float],
        probe: WireProbe | None = None,
    ) -> None:
        self.name = name
        self._abort = abort
        self._clock = clock
        self._probe = probe
        self.stall_after = stall_after
        self.started = clock()
        self.last_progress = self.started
        self.deadline = None if deadline is None else self.started + deadline
        self.verdict: Verdict | None = None
        self._acked: int | None = None  # the wire's acknowledged-byte counter at the last look
        self._max_window = 0  # the largest receive window the peer advertised
        self._wire_visible = False
        self._body_sent = False
        self._replying_since: float | None = None  # when the wire had all of the body

    def progress(self) -> None:
        self.last_progress = self._clock()

    def handed(self, nbytes: int) -> None:
        """``nbytes`` more were handed to the socket: progress only if the wire itself cannot be seen."""
        if nbytes and not self._wire_visible:
            self.progress()

    def body_sent(self) -> None:
        """The whole request body is handed over; once the wire has it all, the reply is awaited."""
        self._body_sent = True

    def observe(self, now: float) -> None:
        """Take progress from the wire: acknowledged bytes, or while awaiting the reply, a peer that still ACKs."""
        probe = self._probe
        sample = probe.sample() if probe is not None else None
        self._wire_visible = sample is not None
        if probe is None or sample is None:
            return
        if sample.acked != self._acked:
            self._acked = sample.acked
            self.last_progress = now
        if not self._body_sent or sample.unacked:
            return
        if self._replying_since is None:
            self._replying_since = now
            probe.keep_probing(True)
        # Everything is acknowledged and the reply is awaited. Probes go out once per KEEPALIVE_INTERVAL,
        # so an ACK that recent means the peer is there; a peer whose kernel answers but whose program
        # sits on the bytes (a hung proxy) looks the same, so that credit lasts only as long again as
        # the body took: time for hops behind the peer at least half as fast as the first one to drain.
        heard = now - max(0.0, sample.ack_age - KEEPALIVE_INTERVAL)
        credit_until = 2 * self._replying_since - self.started
        self.last_progress = max(self.last_progress, min(heard, credit_until))

    def close(self) -> None:
        """The transfer ended: the connection may be reused, with the system's keepalive settings."""
        if self._replying_since is not None and self._probe is not None:
            self._probe.keep_probing(False)

    def check(self, now: float) -> Verdict | None:
        """Fire the abort once when the transfer stalled or overran its deadline."""
        if self.verdict is not None:
            return None
        self.observe(now)
        if self.stall_after > 0 and now - self.last_progress >= self.stall_after:
            self.verdict = Verdict.STALLED
        elif self.deadline is not None and now >= self.deadline:
            self.verdict = Verdict.DEADLINE
        else:
            return None
        log.warning(
            "watchdog: aborting %s (%s, %.1fs since last progress)",
            self.name,
            self.verdict.value,
            now - self.last_progress,
        )
        self._abort()
        return self.verdict

    def fire(self, verdict: Verdict) -> None:
        if self.verdict is None:
            self.verdict = verdict
            self._abort()


class Watchdog:
    """Checks every registered ``Watch`` from one background thread; ``check()`` runs a scan directly."""

    def __init__(self, *, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self,
        name: str,
        abort: Callable[[], None],
        *,
        stall_after: float,
        deadline: float | None = None,
        probe: WireProbe | None = None,
    ) -> Watch:
        w = Watch(name, abort, stall_after, deadline, self._clock, probe)
        with self._lock:
            self._watches.add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)
        w.close()

    def check(self) -> list[Watch]:
        """Scan once; returns the watches that fired now."""
        now = self._clock()
        with self._lock:
            watches = list(self._watches)
        return [w for w in watches if w.check(now) is not None]

    def abort_all(self) -> None:
        """Abort every watched transfer now (``stop()`` after its grace period)."""
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.fire(Verdict.DEADLINE)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="upload-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check()
