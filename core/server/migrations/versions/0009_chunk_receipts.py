"""Chunk receipts name their checksum (``<algorithm>:<hex>``): chunks may be checked by sha256 or crc32c.

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.alter_column("sha256", new_column_name="receipt")
    op.execute(sa.text("UPDATE chunks SET receipt = 'sha256:' || receipt"))


def downgrade() -> None:
    # An older server compares receipts with sha256 hex only: a crc32c receipt would look like another
    # chunk's bytes, so those chunks are forgotten and sent again.
    op.execute(sa.text("DELETE FROM chunks WHERE receipt NOT LIKE 'sha256:%'"))
    op.execute(sa.text("UPDATE chunks SET receipt = substr(receipt, 8)"))
    with op.batch_alter_table("chunks") as batch:
        batch.alter_column("receipt", new_column_name="sha256")
