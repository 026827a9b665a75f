"""The bag catalogue: bags, their files and their topics, indexed for GET /bags.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TIME = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "bags",
        sa.Column("bag_id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("robot_id", sa.Text, nullable=False),
        sa.Column("session", sa.Text, nullable=False),
        sa.Column("split_index", sa.Integer, nullable=False),
        sa.Column("storage", sa.Text, nullable=False),
        sa.Column("recovered", sa.Boolean, nullable=False),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("end_ns", sa.BigInteger, nullable=False),
        sa.Column("message_count", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("stored_size", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_index("bags_by_start", "bags", ["start_ns", "bag_id"])
    op.create_index("bags_by_robot", "bags", ["robot_id", "start_ns"])
    op.create_index("bags_by_session", "bags", ["session", "start_ns"])
    op.create_table(
        "bag_files",
        sa.Column("upload_id", sa.String(32), primary_key=True),
        sa.Column("bag_id", sa.String(32), nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("facts", sa.Text, nullable=False),
    )
    op.create_index("bag_files_by_bag", "bag_files", ["bag_id"])
    op.create_table(
        "bag_topics",
        sa.Column("bag_id", sa.String(32), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("message_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("bag_id", "name"),
    )
    op.create_index("bag_topics_by_name", "bag_topics", ["name", "bag_id"])
    op.create_index("bag_topics_by_type", "bag_topics", ["type", "bag_id"])


def downgrade() -> None:
    for table in ("bag_topics", "bag_files", "bags"):
        op.drop_table(table)
