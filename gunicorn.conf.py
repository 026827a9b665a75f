"""gunicorn settings for chunk uploads; always passed explicitly with ``-c gunicorn.conf.py``.

gthread workers: a sync worker is killed by ``timeout`` while one slow cellular
chunk is still arriving; with gthread the timeout is only a heartbeat.
Command-line flags (``-w``, ``-b``, ``--certfile``) override these values.
"""

import os
import tempfile

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 120
graceful_timeout = 60
keepalive = 75
# HTTP parser limits. gunicorn answers a request over them itself, with a short HTML
# 400/414/431 page the app never sees (DEPLOYMENT.md, "Protocol limits"). nginx in front refuses
# longer lines and headers first, in JSON (large_client_header_buffers 4 4k in nginx/): the
# request line limit is gunicorn's maximum so nginx is always the stricter of the two.
limit_request_line = 8190  # bytes of the request line (method, path, query, version)
limit_request_fields = 100  # header fields per request
limit_request_field_size = 8190  # bytes of one header line
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"

# Prometheus multiprocess mode (core/server/metrics.py): every worker writes its samples to files
# in this folder and /metrics merges them. It must be set before a worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ros2-upload-metrics-")


def on_starting(server):
    """Start every master with empty metric files: old workers' counters would otherwise live on."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    # Only prometheus_client's own files: the folder may be shared with something else by mistake.
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))


def child_exit(server, worker):
    """A dead worker's gauges must stop counting (its counters and histograms are kept, as they should be)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Resume queued finalize jobs and the sweep as soon as a worker boots, not only at its first request.

    Also: a worker asked to stop (SIGTERM: graceful) ends its dashboard streams at once; they would
    otherwise hold the graceful stop for up to DASHBOARD_SSE_MAX_SECONDS.
    """
    import signal

    from core.server.jobs import start_background
    from dashboard.views import HUB_EXTENSION

    extensions = getattr(worker.wsgi, "extensions", {})
    if "job_runner" in extensions:  # not for bench/baseline_server.py
        start_background(worker.wsgi)
    hub, stop = extensions.get(HUB_EXTENSION), signal.getsignal(signal.SIGTERM)
    if hub is not None and callable(stop):

        def end_streams_then_stop(signum, frame):
            hub.ending.set()
            stop(signum, frame)

        signal.signal(signal.SIGTERM, end_streams_then_stop)
