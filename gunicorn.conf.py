"""gunicorn settings for chunk uploads; always passed explicitly with ``-c gunicorn.conf.py``.

gthread workers: a sync worker is killed by ``timeout`` while one slow cellular
chunk is still arriving; with gthread the timeout is only a heartbeat.
Command-line flags (``-w``, ``-b``, ``--certfile``) override these values.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 120
graceful_timeout = 60
keepalive = 75
# A robot's chunk PUT may be a few MiB; keep request-line/header limits at their defaults.
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
