"""tus uploads: the exported state of the in-order sha256 at the offset, so any worker or host continues it.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tus_uploads", sa.Column("hash_format", sa.Text))
    op.add_column("tus_uploads", sa.Column("hash_state", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("tus_uploads") as batch:
        batch.drop_column("hash_state")
        batch.drop_column("hash_format")
