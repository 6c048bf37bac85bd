"""Indexes that answer a caller's listings from the caller's rows and the public ones

The visibility rule (own images, plus public ones) becomes two index ranges:
``(zone, owner, create_time, image_id)`` for the caller's own images, and a
partial index over the public images only, so neither a page nor an exact
``total_count`` reads the rest of the table. On PostgreSQL the public index
carries the filtered columns (``INCLUDE``) so counts are index-only scans,
``pg_trgm`` GIN indexes serve ``search_word`` over public images, and the
jobs index carries ``status`` and ``action`` for the same reason. SQLite
gets the plain forms.

Public images grow with the region (1 in 100 of a million images is 10,000
rows to count on every request), so their exact count per listing filter is
kept in ``public_image_counts`` by triggers on ``images``, filled here from
the rows in place. PostgreSQL only: SQLite (the small embedded deployment)
counts the rows, and its batch migrations rebuild tables without triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PUBLIC = "visibility = 'public'"
PUBLIC_COLUMNS = ["owner", "status", "provider", "processor_type", "os_family", "image_name"]


# What a listing filters public images by: one counter per combination.
GROUP = ("zone", "status", "processor_type", "os_family", "provider")
_GROUP_OF = {"os_family": "lower({row}.os_family)"}


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _create_public_counts()
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


def _create_public_counts() -> None:
    op.create_table(
        "public_image_counts",
        sa.Column("zone", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("processor_type", sa.String(16), nullable=False),
        sa.Column("os_family", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*GROUP, name="pk_public_image_counts"),
    )
    op.execute(_COUNTING_FUNCTION)
    for statement in _COUNTING_TRIGGERS:
        op.execute(statement)
    columns = ", ".join(GROUP)
    grouped = _group_values("images")
    op.execute(
        f"INSERT INTO public_image_counts ({columns}, images) "
        f"SELECT {grouped}, count(*) FROM images WHERE {PUBLIC} GROUP BY {grouped}"
    )


def _group_values(row: str) -> str:
    return ", ".join(_GROUP_OF.get(c, "{row}." + c).format(row=row) for c in GROUP)


def _group_match(row: str) -> str:
    return " AND ".join(f"{c} = " + _GROUP_OF.get(c, "{row}." + c).format(row=row) for c in GROUP)


_ADD = (
    f"INSERT INTO public_image_counts ({', '.join(GROUP)}, images) "
    f"VALUES ({_group_values('NEW')}, 1) ON CONFLICT ({', '.join(GROUP)}) "
    "DO UPDATE SET images = public_image_counts.images + 1"
)
_REMOVE = f"UPDATE public_image_counts SET images = images - 1 WHERE {_group_match('OLD')}"
_CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in ("visibility", *GROUP))

_COUNTING_FUNCTION = f"""
CREATE FUNCTION count_public_images() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.visibility = 'public' THEN
        {_REMOVE};
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.visibility = 'public' THEN
        {_ADD};
    END IF;
    RETURN NULL;
END $$
"""
# Only rows that are, were or become public call the function at all.
_COUNTING_TRIGGERS = (
    "CREATE TRIGGER count_public_images_inserted AFTER INSERT ON images FOR EACH ROW "
    "WHEN (NEW.visibility = 'public') EXECUTE FUNCTION count_public_images()",
    "CREATE TRIGGER count_public_images_deleted AFTER DELETE ON images FOR EACH ROW "
    "WHEN (OLD.visibility = 'public') EXECUTE FUNCTION count_public_images()",
    "CREATE TRIGGER count_public_images_updated AFTER UPDATE ON images FOR EACH ROW "
    f"WHEN (({_CHANGED}) AND 'public' IN (OLD.visibility, NEW.visibility)) "
    "EXECUTE FUNCTION count_public_images()",
)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for change in ("inserted", "deleted", "updated"):
            op.execute(f"DROP TRIGGER count_public_images_{change} ON images")
        op.execute("DROP FUNCTION count_public_images()")
        op.drop_table("public_image_counts")
        for column in ("image_id", "image_name"):
            op.drop_index(f"ix_images_public_{column}_trgm", table_name="images")
    op.drop_index("ix_jobs_zone_owner_create_time", table_name="jobs")
    op.drop_index("ix_images_public_zone_create_time", table_name="images")
    op.drop_index("ix_images_zone_owner_create_time", table_name="images")
