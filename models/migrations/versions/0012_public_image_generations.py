"""A generation number per zone that every change to its public images bumps

An exact ``total_count`` of a ``search_word`` has to look at every public image
the word may match: 10,000 index entries at 1,000,000 images for a common word,
on every request. Public images change rarely, so the API remembers the public
part of a search's total with the zone's generation at the time it was
counted, and reuses it while the generation read with the request (in the
statement that checks the token) is the same (models/images.py). The triggers
bump the generation in the same transaction as the change, so a reader either
sees the change and the new generation, or neither.

Every row that is, was or becomes public bumps it, whatever the column changed:
a rare write, and no list of "columns a search depends on" to keep in step.
PostgreSQL only, as ``public_image_counts`` (0007): SQLite counts the rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 20:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# A zone's first generation is the clock in microseconds, not 1: a table dropped and made
# again (a downgrade, then an upgrade) never repeats a generation an API process remembers.
_FIRST = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
_BUMP = (
    "INSERT INTO public_image_generations (zone, generation) VALUES ({zone}, " + _FIRST + ") "
    "ON CONFLICT (zone) DO UPDATE SET generation = public_image_generations.generation + 1"
)

_BUMPING_FUNCTION = f"""
CREATE FUNCTION bump_public_image_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE public_image_generations SET generation = generation + 1;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_BUMP.format(zone="OLD.zone")};
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.zone IS DISTINCT FROM OLD.zone) THEN
        {_BUMP.format(zone="NEW.zone")};
    END IF;
    RETURN NULL;
END $$
"""
# Only rows that are, were or become public call the function at all.
_BUMPING_TRIGGERS = (
    "CREATE TRIGGER bump_public_image_generation_inserted AFTER INSERT ON images "
    "FOR EACH ROW WHEN (NEW.visibility = 'public') "
    "EXECUTE FUNCTION bump_public_image_generation()",
    "CREATE TRIGGER bump_public_image_generation_deleted AFTER DELETE ON images "
    "FOR EACH ROW WHEN (OLD.visibility = 'public') "
    "EXECUTE FUNCTION bump_public_image_generation()",
    "CREATE TRIGGER bump_public_image_generation_updated AFTER UPDATE ON images "
    "FOR EACH ROW WHEN ('public' IN (OLD.visibility, NEW.visibility)) "
    "EXECUTE FUNCTION bump_public_image_generation()",
    "CREATE TRIGGER bump_public_image_generation_truncated AFTER TRUNCATE ON images "
    "FOR EACH STATEMENT EXECUTE FUNCTION bump_public_image_generation()",
)
_CHANGES = ("inserted", "deleted", "updated", "truncated")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "public_image_generations",
        sa.Column("zone", sa.String(32), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
    )
    op.execute(_BUMPING_FUNCTION)
    for statement in _BUMPING_TRIGGERS:
        op.execute(statement)
    # Zones without a row read as generation 0 until their first public image.
    op.execute(
        "INSERT INTO public_image_generations (zone, generation) "
        f"SELECT zone, {_FIRST} FROM (SELECT DISTINCT zone FROM images "
        "WHERE visibility = 'public') AS zones"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for change in _CHANGES:
        op.execute(f"DROP TRIGGER bump_public_image_generation_{change} ON images")
    op.execute("DROP FUNCTION bump_public_image_generation()")
    op.drop_table("public_image_generations")
