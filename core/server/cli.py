"""Admin commands: ``flask --app upload_server sweep`` (others add theirs with ``app.cli.add_command``)."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext


@click.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Expire incomplete uploads idle longer than UPLOAD_TTL and delete their part files."""
    expired = current_app.extensions["upload_service"].sweep()
    click.echo(f"expired {expired} upload(s)")


def init_app(app: Flask) -> None:
    app.cli.add_command(sweep_command)
