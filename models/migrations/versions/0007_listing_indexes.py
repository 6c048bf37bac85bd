"""Indexes that answer a caller's listings from the caller's rows and the public ones

The visibility rule (own images, plus public ones) becomes two index ranges:
``(zone, owner, create_time, image_id)`` for the caller's own images, and a
partial index over the public images only, so neither a page nor an exact
``total_count`` reads the rest of the table. On PostgreSQL the public index
carries the filtered columns (``INCLUDE``) so counts are index-only scans,
``pg_trgm`` GIN indexes serve ``search_word`` over public images, and the
jobs index carries ``status`` and ``action`` for the same reason. SQLite
gets the plain forms.

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-27 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None

PUBLIC = "visibility = 'public'"
PUBLIC_COLUMNS = ["owner", "status", "provider", "processor_type", "os_family", "image_name"]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_index(
        "ix_images_zone_owner_create_time",
        "images",
        ["zone", "owner", "create_time", "image_id"],
        postgresql_include=["status"],
    )
    op.create_index(
        "ix_images_public_zone_create_time",
        "images",
        ["zone", "create_time", "image_id"],
        postgresql_include=PUBLIC_COLUMNS,
        postgresql_where=sa.text(PUBLIC),
        sqlite_where=sa.text(PUBLIC),
    )
    op.create_index(
        "ix_jobs_zone_owner_create_time",
        "jobs",
        ["zone", "owner", "create_time", "job_id"],
        postgresql_include=["status", "action"],
    )
    if postgresql:
        _create_trigram_indexes()


def _create_trigram_indexes() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for column in ("image_id", "image_name"):
        op.execute(
            f"CREATE INDEX ix_images_public_{column}_trgm ON images "
            f"USING gin (lower({column}) gin_trgm_ops) WHERE {PUBLIC}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in ("image_id", "image_name"):
            op.drop_index(f"ix_images_public_{column}_trgm", table_name="images")
    op.drop_index("ix_jobs_zone_owner_create_time", table_name="jobs")
    op.drop_index("ix_images_public_zone_create_time", table_name="images")
    op.drop_index("ix_images_zone_owner_create_time", table_name="images")
