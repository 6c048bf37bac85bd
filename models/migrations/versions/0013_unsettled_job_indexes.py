"""The jobs' status indexes hold only the jobs not yet settled

``ix_jobs_status_send_requested_at`` and ``ix_jobs_status_heartbeat_at`` serve
the sweep (pending jobs not sent within the grace, working jobs whose heartbeat
stopped), the queue's state and the orphan sweep's copies in progress: every
one of them asks for pending or working jobs. They held an entry for every job
ever made, and each settle (status is indexed, so it is never a HOT update)
wrote a new entry into both. As partial indexes over the unsettled jobs they
stay as small as the queue, and a settle writes into neither: a job's row
version that is successful, failed or done with failure has no entry in them
(``docs/pipeline-profile.md``, round 4).

The rebuild reads the table once; the new indexes are built before the old
ones go, so the sweep's queries are never without one.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 23:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UNSETTLED = "status IN ('pending', 'working')"
# The second column of each status index (the first is status).
_COLUMNS = ("send_requested_at", "heartbeat_at")


def upgrade() -> None:
    for column in _COLUMNS:
        op.create_index(
            f"ix_jobs_unsettled_status_{column}",
            "jobs",
            ["status", column],
            postgresql_where=sa.text(UNSETTLED),
            sqlite_where=sa.text(UNSETTLED),
        )
        op.drop_index(f"ix_jobs_status_{column}", table_name="jobs")


def downgrade() -> None:
    for column in _COLUMNS:
        op.create_index(f"ix_jobs_status_{column}", "jobs", ["status", column])
        op.drop_index(f"ix_jobs_unsettled_status_{column}", table_name="jobs")
