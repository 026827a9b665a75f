"""Admin commands: ``flask --app upload_server sweep`` and ``db upgrade``; others add theirs with ``add_command``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from core.server import db


@click.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Expire incomplete uploads idle longer than UPLOAD_TTL and delete their part files."""
    expired = current_app.extensions["upload_service"].sweep()
    click.echo(f"expired {expired} upload(s)")


db_cli = AppGroup("db", help="The state database's schema (SQLite in UPLOAD_DIR or STATE_STORE_URI).")


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Create the schema, or upgrade it to this version's, keeping every row (back up first)."""
    engine = current_app.extensions[db.EXTENSION]
    before, after = db.upgrade(engine)
    url = engine.url.render_as_string(hide_password=True)
    if before == after:
        click.echo(f"state database {url} is already at schema {after}")
    else:
        click.echo(f"state database {url} upgraded from schema {before or '(empty)'} to {after}")


def init_app(app: Flask) -> None:
    app.cli.add_command(sweep_command)
    app.cli.add_command(db_cli)
