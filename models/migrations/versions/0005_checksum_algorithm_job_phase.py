"""images.checksum_algorithm and jobs.phase

Images gain the name of the algorithm their checksum was computed with. Every checksum
written before this revision is the plain SHA-256 of the whole file, so existing rows that
have one are marked ``sha256`` and stay verifiable; new captures record
``sha256-chunks-4MiB``. Jobs gain the phase a working job is in (copying, syncing, ...).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("checksum_algorithm", sa.String(length=32), nullable=False, server_default="")
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("phase", sa.String(length=16), nullable=False, server_default="")
        )
    op.execute("UPDATE images SET checksum_algorithm = 'sha256' WHERE checksum <> ''")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("phase")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("checksum_algorithm")
