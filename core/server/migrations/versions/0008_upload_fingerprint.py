"""Uploads remember the init ``fingerprint`` (size, head and tail): resume and dedup candidates before the sha256.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("uploads", sa.Column("fingerprint", sa.Text))
    op.create_index("uploads_by_fingerprint", "uploads", ["fingerprint", "filesize", "state"])


def downgrade() -> None:
    op.drop_index("uploads_by_fingerprint", "uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("fingerprint")
