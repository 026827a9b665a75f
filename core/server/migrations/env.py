"""Alembic environment: migrations run on the server's own engine, one transaction, one upgrader at a time."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from core.server.db import metadata

# Any 64-bit number: PostgreSQL's advisory lock that serialises concurrent upgrades (several hosts starting).
_UPGRADE_LOCK = 0x726F73327570


def run_migrations() -> None:
    engine: Engine = context.config.attributes["engine"]
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, which serialises upgraders by itself
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
