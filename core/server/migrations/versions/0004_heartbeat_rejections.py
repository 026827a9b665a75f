"""Robots remember the last heartbeat the server refused, with its status and reason, for the dashboard.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TIME = sa.Float(precision=53)  # as in 0002: a migration never imports the live schema
_COLUMNS = ("rejected_at", "rejected_status", "rejected_reason")


def upgrade() -> None:
    op.add_column("robots", sa.Column("rejected_at", _TIME))
    op.add_column("robots", sa.Column("rejected_status", sa.Integer))
    op.add_column("robots", sa.Column("rejected_reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("robots") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
