"""A network namespace with a bandwidth-capped loopback (``tc tbf``), entered by the calling thread.

The kernel here has no ``netem``, but a ``tbf`` qdisc inside a namespace caps real TCP
traffic. ``enter()`` moves the calling thread into the namespace (setns): every socket it
opens, every thread it starts (a NetworkManager's workers, a FaultProxy's pumps) and every
process it starts (gunicorn) lives there, on the capped ``lo``. ``leave()`` moves it back
and deletes the namespace. Needs root.

    with NetNamespace(rate="256kbit") as ns:   # 32 KB/s
        with GunicornServer(...) as server: ...
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid

_CLONE_NEWNET = 0x40000000


def available() -> bool:
    """Root and the ``ip``/``tc`` tools: what creating a capped namespace needs."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNamespace:
    """``ip netns add``, ``lo`` up with a ``tbf`` rate cap; the thread that enters it is inside until ``leave()``."""

    def __init__(self, *, rate: str, burst: str = "32kbit", latency: str = "400ms") -> None:
        self.name = f"upload-test-{uuid.uuid4().hex[:8]}"
        self.rate, self.burst, self.latency = rate, burst, latency
        self._home: int | None = None

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def _tbf(self, verb: str, rate: str) -> None:
        self._run("tc", "qdisc", verb, "dev", "lo", "root", "tbf", "rate", rate, "burst", self.burst,
                  "latency", self.latency)  # fmt: skip

    def enter(self) -> NetNamespace:
        self._run("ip", "netns", "add", self.name)
        try:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            # tbf cannot pass a packet larger than its burst: loopback MTU 64 KiB would stall every transfer.
            self._run("ip", "link", "set", "lo", "mtu", "1500", "up")
            self._tbf("add", self.rate)
        except BaseException:
            self.leave()
            raise
        return self

    def set_rate(self, rate: str) -> None:
        """Change the cap while running (e.g. lift it to download a result quickly)."""
        self._tbf("change", rate)

    def leave(self) -> None:
        """Back to the thread's own namespace; the namespace goes (processes started inside must be stopped first)."""
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30, check=False)

    def __enter__(self) -> NetNamespace:
        return self.enter()

    def __exit__(self, *exc: object) -> None:
        self.leave()
