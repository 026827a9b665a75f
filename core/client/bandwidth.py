"""A token bucket shared by every concurrent upload, so ``bandwidth_limit`` caps the robot's total rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Blocks senders so that bytes leave at ``rate`` bytes/s on average; 0 or None means unlimited.

    Senders take tokens *on credit*: ``consume`` subtracts first and then sleeps
    off its own debt outside the lock. Concurrent senders therefore queue up
    behind each other's debt and the shared rate holds however many threads
    send. The burst is small (``burst_seconds`` of the rate) so a limit holds
    over seconds, not just on average over minutes. ``rate`` can change at any
    time; the new rate applies from the next refill.
    """

    def __init__(
        self,
        rate: float | None = None,
        *,
        burst_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._burst_seconds = burst_seconds
        self._rate = float(rate or 0)
        self._tokens = 0.0
        self._stamp = clock()

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        with self._lock:
            self._refill()
            self._rate = float(value or 0)
            # Debt owed at the old rate is forgiven when the limit is lifted, kept otherwise.
            self._tokens = min(self._tokens, self._capacity()) if self._rate > 0 else 0.0

    def _capacity(self) -> float:
        return self._rate * self._burst_seconds

    def _refill(self) -> None:
        now = self._clock()
        if self._rate > 0:
            self._tokens = min(self._capacity(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def consume(self, amount: int) -> float:
        """Take ``amount`` bytes' worth of tokens, sleeping until they are earned; returns the time slept."""
        with self._lock:
            self._refill()
            if self._rate <= 0:
                return 0.0
            self._tokens -= amount
            delay = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if delay > 0:
            self._sleep(delay)
        return delay
