"""Admin commands: ``flask --app upload_server sweep``, ``db upgrade``, ``uploads delete`` (others: ``add_command``)."""

from __future__ import annotations

import getpass

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from core.server import db
from core.server.errors import ApiError
from core.server.identity import Identity


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


uploads_cli = AppGroup("uploads", help="Manage stored uploads.")


@uploads_cli.command("delete")
@click.argument("upload_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_command(upload_id: str, yes: bool) -> None:
    """Delete a complete upload's stored file (its record stays, marked deleted); audited in the server log."""
    service = current_app.extensions["upload_service"]
    if not yes:
        click.confirm(f"Delete the stored file of upload {upload_id}?", abort=True)
    # Whoever can run the server's CLI holds its storage anyway: they act as an admin, named in the audit line.
    try:
        deletion = service.delete_stored(Identity(f"cli:{getpass.getuser()}", admin=True), upload_id, reason="cli")
    except ApiError as err:  # unknown id, not complete: the same message the API gives, as a CLI error
        raise click.ClickException(str(err)) from err
    kept = f"; the file is kept, shared with upload {deletion.shared_with}" if deletion.shared_with else ""
    click.echo(f"deleted upload {upload_id} ({deletion.record.filename}): {deletion.bytes_freed} bytes freed{kept}")


def init_app(app: Flask) -> None:
    app.cli.add_command(sweep_command)
    app.cli.add_command(db_cli)
    app.cli.add_command(uploads_cli)
