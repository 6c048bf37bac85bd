"""instances.host and jobs.host: a capture runs on its instance's compute host

Every instance the earlier release knew lives on host ``local`` (the host
``imagesvc up`` serves). Capture and import jobs of the earlier release are
routed there too; other jobs keep the shared queue (host '').

Revision ID: 0010
Revises: 0007
Create Date: 2026-11-27 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None

DISK_ACTIONS = ("CaptureInstance", "ImportImage")


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("host", sa.String(length=64), nullable=False, server_default="local")
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("host", sa.String(length=64), nullable=False, server_default="")
        )
    jobs = sa.table("jobs", sa.column("action", sa.String), sa.column("host", sa.String))
    op.execute(jobs.update().where(jobs.c.action.in_(DISK_ACTIONS)).values(host="local"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("host")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("host")
