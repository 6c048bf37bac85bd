"""lifecycle: quotas, deprecation, instance disk size, status index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:36:50.449152
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quota_images", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("quota_gb", sa.Integer(), nullable=True))

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disk_size", sa.BigInteger(), nullable=False, server_default="0")
        )

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deprecated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_images_status_status_time", ["status", "status_time"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("disk_size")

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_status_status_time")
        batch_op.drop_column("deprecated_at")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("quota_gb")
        batch_op.drop_column("quota_images")
