"""tus uploads: the offset, length, concatenation and in-order sha256 of uploads made through /files/.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tus_uploads",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("upload_length", sa.BigInteger, nullable=False),
        sa.Column("upload_offset", sa.BigInteger, nullable=False),
        sa.Column("concat", sa.Text),
        sa.Column("parts", sa.Text),
        sa.Column("raw_metadata", sa.Text, nullable=False),
        sa.Column("received_sha256", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("tus_uploads")
