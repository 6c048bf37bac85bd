"""reliability

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 05:49:29.563801
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "client_requests",
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "request_id", name=op.f("pk_client_requests")),
    )
    with op.batch_alter_table("client_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_client_requests_created_at"), ["created_at"], unique=False
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("worker", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.create_index(
            "ix_jobs_status_heartbeat_at", ["status", "heartbeat_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_heartbeat_at")
        batch_op.drop_column("worker")
        batch_op.drop_column("heartbeat_at")

    with op.batch_alter_table("client_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_requests_created_at"))

    op.drop_table("client_requests")
