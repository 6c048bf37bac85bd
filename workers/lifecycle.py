"""The image sweep: cease deleted images past retention, free their files, purge old rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from models.lifecycle import cease_expired, files_of_ceased, forget_file, purge_ceased
from workers.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    ceased: int
    freed: int
    purged: int


def sweep_images(context: WorkerContext) -> SweepReport:
    """One pass; safe to run concurrently and again after a crash at any point.

    Rows move first and files go after, so a crash leaves at worst a ceased
    row still naming its file, which the next pass frees.
    """
    settings = context.settings
    with context.database.transaction() as session:
        ceased = cease_expired(session, settings.deleted_retention)
    freed = _free_files(context)
    with context.database.transaction() as session:
        purged = purge_ceased(session, settings.ceased_retention)
    report = SweepReport(len(ceased), freed, purged)
    if ceased or freed or purged:
        log.info("image sweep: %s", report)
    return report


def _free_files(context: WorkerContext) -> int:
    with context.database.reading() as session:
        held = files_of_ceased(session)
    for item in held:
        (context.settings.image_dir / item.file_name).unlink(missing_ok=True)
        with context.database.transaction() as session:
            forget_file(session, item.image_id)
    return len(held)
