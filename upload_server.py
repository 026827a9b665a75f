"""Upload server entry point: ``gunicorn -c gunicorn.conf.py upload_server:app`` or ``python3 upload_server.py``."""

from __future__ import annotations

from core.server.app import create_app
from core.server.jobs import start_background
from core.server.tls import server_context

app = create_app()


def main() -> None:
    """Development server (threaded); HTTPS when SSL_CERT and SSL_KEY are set, as in the seed guide."""
    config = app.extensions["server_config"]
    context = server_context(config.ssl_cert, config.ssl_key) if config.ssl_cert and config.ssl_key else None
    start_background(app)
    app.run(host=config.host, port=config.port, ssl_context=context, threaded=True)


if __name__ == "__main__":
    main()
