"""The schema of the pre-Alembic server's state.sqlite3: uploads, chunk receipts, finalize jobs, leases.

A database made by that server is stamped at this revision (its tables already exist) and then upgraded.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TIME = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("filesize", sa.BigInteger, nullable=False),
        sa.Column("chunk_size", sa.Integer, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("md5", sa.Text),
        sa.Column("sha256", sa.Text),
        sa.Column("compression", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("blob_id", sa.Text),
        sa.Column("codec", sa.Text),
        sa.Column("stored_size", sa.BigInteger),
        sa.Column("verified", sa.Boolean, nullable=False),
        sa.Column("deduplicated", sa.Boolean, nullable=False),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("progress", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
    )
    op.create_index("uploads_by_file", "uploads", ["owner", "filename", "filesize", "state"])
    op.create_index("uploads_by_sha256", "uploads", ["sha256", "state"])
    op.create_index("uploads_by_md5", "uploads", ["md5", "filesize", "state"])
    op.create_index("uploads_by_created", "uploads", ["created_at"])
    op.create_index("uploads_by_activity", "uploads", ["state", "updated_at"])
    op.create_table(
        "chunks",
        sa.Column("upload_id", sa.String(32), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("upload_id", "idx"),
    )
    op.create_table(
        "jobs",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("holder", sa.Text),
        sa.Column("due_at", _TIME, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("until", _TIME, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "jobs", "chunks", "uploads"):
        op.drop_table(table)
