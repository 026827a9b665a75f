"""Test helpers for the state database: open stores on either engine, and let database time pass."""

from __future__ import annotations

from sqlalchemy import Engine, update

from core.config import ServerConfig
from core.server import db
from core.server.db import jobs, leases
from core.server.state_store import SQLStateStore, StateStore


def open_engine(upload_dir: object, state_store_uri: str) -> Engine:
    """The engine a server on ``upload_dir`` with this STATE_STORE_URI would open (schema created if empty)."""
    return db.checked_engine(ServerConfig(upload_dir=upload_dir, state_store_uri=state_store_uri))  # type: ignore[arg-type]


def engine_of(store: StateStore) -> Engine:
    assert isinstance(store, SQLStateStore)
    return store.engine


def pass_database_time(store_or_engine: StateStore | Engine, seconds: float) -> None:
    """Leases and job due times are the database's clock: move them ``seconds`` into the past instead of waiting."""
    engine = store_or_engine if isinstance(store_or_engine, Engine) else engine_of(store_or_engine)
    with db.write(engine) as conn:
        conn.execute(update(jobs).values(due_at=jobs.c.due_at - seconds))
        conn.execute(update(leases).values(until=leases.c.until - seconds))
