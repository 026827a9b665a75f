"""Every store in one database: API keys, robots and commands, dashboard counters join the upload state.

On SQLite the pre-Alembic server kept them in ``keys.sqlite3``, ``robots.sqlite3`` and
``dashboard-metrics.sqlite3`` beside ``state.sqlite3``; their rows are copied in here (the old
files are left untouched, for the operator to delete once the upgrade is confirmed).

Revision ID: 0002
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("upload_server")
_TIME = sa.Float(precision=53)


def upgrade() -> None:
    keys = op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(12), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("secret_sha256", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])
    robots = op.create_table(
        "robots",
        sa.Column("robot_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("last_seen", _TIME, nullable=False),
        sa.Column("first_seen", _TIME, nullable=False),
    )
    commands = op.create_table(
        "commands",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("robot_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("issued_by", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_index("commands_open", "commands", ["robot_id", "state"])
    op.create_index("commands_created", "commands", ["created_at"])
    buckets = op.create_table(
        "dashboard_buckets",
        sa.Column("t", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("rate_limited", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or not bind.engine.url.database:
        return
    folder = Path(bind.engine.url.database).parent
    _copy(folder / "keys.sqlite3", "api_keys", keys, bools=("admin",))
    _copy(folder / "robots.sqlite3", "robots", robots)
    _copy(folder / "robots.sqlite3", "commands", commands)
    _copy(folder / "dashboard-metrics.sqlite3", "buckets", buckets)


def _copy(path: Path, source: str, target: sa.Table, bools: tuple[str, ...] = ()) -> None:
    """Copy every row of ``source`` in the old file at ``path`` (if there is one) into ``target``."""
    if not path.is_file():
        return
    old = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        old.row_factory = sqlite3.Row
        if not old.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (source,)).fetchone():
            return
        rows = [dict(row) for row in old.execute(f"SELECT * FROM {source}")]  # noqa: S608 - fixed table names
    finally:
        old.close()
    names = {c.name for c in target.columns}
    rows = [{k: (bool(v) if k in bools else v) for k, v in row.items() if k in names} for row in rows]
    if rows:
        op.bulk_insert(target, rows)
    log.info("Schema upgrade: copied %d row(s) of %s from %s into %s", len(rows), source, path.name, target.name)


def downgrade() -> None:
    for table in ("dashboard_buckets", "commands", "robots", "api_keys"):
        op.drop_table(table)
