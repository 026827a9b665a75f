"""A real Debian nginx running the shipped site config (``nginx/``) on high 127.0.0.1 ports.

The site file and its snippets are used as shipped: only paths (certificates, snippets, logs)
and ports are substituted, and every substitution must match, so a renamed path in the shipped
file fails the test instead of silently testing something else. The main ``nginx.conf`` is
Debian's own, with its pid/log/include paths moved into the test prefix.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.helpers.processes import REPO_ROOT, ManagedProcess, free_port, port_open, wait_until

NGINX = "/usr/sbin/nginx"
DEBIAN_MAIN_CONF = Path("/etc/nginx/nginx.conf")
SITE_FILE = REPO_ROOT / "nginx" / "ros2-upload.conf"
SNIPPETS_DIR = REPO_ROOT / "nginx" / "snippets"
SHIPPED_CERT = "/etc/letsencrypt/live/upload.example.com/fullchain.pem"
SHIPPED_KEY = "/etc/letsencrypt/live/upload.example.com/privkey.pem"
SHIPPED_UPSTREAM = "    server 127.0.0.1:8080 max_fails=1 fail_timeout=10s;\n"


class TemplateError(AssertionError):
    """A substitution did not match the shipped file: the file and the test disagree."""


def substitute(text: str, replacements: Mapping[str, str], *, source: str) -> str:
    for old, new in replacements.items():
        if old not in text:
            msg = f"{source}: expected {old!r} in the shipped file"
            raise TemplateError(msg)
        text = text.replace(old, new)
    return text


class NginxServer:
    """nginx with the shipped site in ``prefix``, in front of gunicorn on ``upstream_ports``."""

    def __init__(
        self,
        prefix: Path,
        *,
        upstream_ports: Sequence[int],
        cert: Path,
        key: Path,
        variations: Mapping[str, str] | None = None,
    ) -> None:
        """``variations``: further (must-match) substitutions in the site file, for benchmarks of alternatives."""
        self.prefix = prefix
        self.variations = dict(variations or {})
        self.upstream_ports = list(upstream_ports)
        self.cert = cert
        self.key = key
        self.https_port = free_port()
        self.http_port = free_port()
        self.process: ManagedProcess | None = None
        # Workers run as root in tests: pytest's tmp_path chain is 0700, unreadable to `nobody`.
        self.main_conf = self.prefix / "conf" / "nginx.conf"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "ros2-upload.access.log"

    def render(self) -> Path:
        for sub in ("conf", "logs", "snippets", "sites-enabled", "acme", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        for snippet in SNIPPETS_DIR.glob("*.conf"):
            (self.prefix / "snippets" / snippet.name).write_text(snippet.read_text())
        upstreams = "".join(
            f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in self.upstream_ports
        )
        site = substitute(
            SITE_FILE.read_text(),
            {
                SHIPPED_UPSTREAM: upstreams,
                SHIPPED_CERT: str(self.cert),
                SHIPPED_KEY: str(self.key),
                "/etc/nginx/snippets/": f"{self.prefix}/snippets/",
                "/var/log/nginx/": f"{self.prefix}/logs/",
                "/var/www/letsencrypt": str(self.prefix / "acme"),
                "listen 443 ssl;": f"listen 127.0.0.1:{self.https_port} ssl;",
                "listen [::]:443 ssl;": "",
                "listen 80;": f"listen 127.0.0.1:{self.http_port};",
                "listen [::]:80;": "",
                **self.variations,
            },
            source=str(SITE_FILE),
        )
        (self.prefix / "sites-enabled" / SITE_FILE.name).write_text(site)
        tmp = self.prefix / "tmp"
        main = substitute(
            DEBIAN_MAIN_CONF.read_text(),
            {
                "user www-data;": "user root;",
                "worker_processes auto;": "worker_processes 1;",
                "pid /run/nginx.pid;": f"pid {self.prefix}/nginx.pid;",
                "error_log /var/log/nginx/error.log;": f"error_log {self.prefix}/logs/error.log;",
                "access_log /var/log/nginx/access.log;": f"access_log {self.prefix}/logs/access.log;",
                "include /etc/nginx/sites-enabled/*;": f"include {self.prefix}/sites-enabled/*;",
                "http {": (
                    "http {\n"
                    f"\tclient_body_temp_path {tmp}/body;\n\tproxy_temp_path {tmp}/proxy;\n"
                    f"\tfastcgi_temp_path {tmp}/fastcgi;\n\tuwsgi_temp_path {tmp}/uwsgi;\n"
                    f"\tscgi_temp_path {tmp}/scgi;\n"
                ),
            },
            source=str(DEBIAN_MAIN_CONF),
        )
        self.main_conf.write_text(main)
        return self.main_conf

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(self.main_conf), "-e", "stderr", *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        self.render()
        return subprocess.run(self._argv("-t"), capture_output=True, text=True, check=False, timeout=30)

    def start(self, timeout: float = 15.0) -> NginxServer:
        result = self.check()
        if result.returncode != 0:
            msg = f"nginx -t failed:\n{result.stderr}"
            raise RuntimeError(msg)
        self.process = ManagedProcess(
            self._argv("-g", "daemon off;"), log_path=self.prefix / "logs" / "stderr.log"
        ).start()
        wait_until(lambda: self._listening(), timeout, 0.05, f"nginx on port {self.https_port}")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            msg = f"nginx exited early:\n{self.process.log()}"
            raise RuntimeError(msg)
        return port_open(self.https_port)

    def stop(self) -> None:
        """Graceful QUIT by PID: workers finish in-flight requests, then exit."""
        if self.process is not None:
            self.process.stop(signal.SIGQUIT)

    def error_log(self) -> str:
        path = self.prefix / "logs" / "ros2-upload.error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
