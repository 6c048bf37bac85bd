"""jobs.dispatched_at becomes send_requested_at: it is stamped before anything is sent

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_dispatched_at")
        batch_op.alter_column("dispatched_at", new_column_name="send_requested_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_status_send_requested_at", ["status", "send_requested_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_send_requested_at")
        batch_op.alter_column("send_requested_at", new_column_name="dispatched_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_status_dispatched_at", ["status", "dispatched_at"], unique=False
        )
