"""The image sweep: cease deleted images past retention, free their files, purge old rows,
remove orphaned files and forget expired request ids."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice

from sqlalchemy import select

from imagesvc.bootstrap import Services
from models.client_requests import forget_expired
from models.image_lifecycle import cease_expired, files_of_ceased, forget_file, purge_ceased
from models.jobs import copies_in_progress
from models.sweep_lock import sweep_lock
from models.tables import Image
from workers.image_store import owner_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    ceased: int
    freed: int
    purged: int
    orphans: int


def sweep_images(services: Services) -> SweepReport | None:
    """One pass; safe to run concurrently and again after a crash at any point.

    Rows move first and files go after, so a crash leaves at worst a ceased
    row still naming its file, which the next pass frees. On PostgreSQL a pass
    that finds another one running skips it (None; see :mod:`models.sweep_lock`).
    """
    with sweep_lock(services.database, "images") as mine:
        if not mine:
            log.info("image sweep: another pass is running; skipped")
            return None
        return _sweep_images(services)


def _sweep_images(services: Services) -> SweepReport:
    settings = services.settings
    with services.database.transaction() as session:
        ceased = cease_expired(session, settings.deleted_retention)
    freed = _free_files(services)
    with services.database.transaction() as session:
        purged = purge_ceased(session, settings.ceased_retention)
        forget_expired(session)
    orphans = remove_orphans(services)
    report = SweepReport(len(ceased), freed, purged, len(orphans))
    if ceased or freed or purged or orphans:
        log.info("image sweep changed the store", extra=asdict(report))
    return report


def remove_orphans(services: Services) -> list[str]:
    """Remove store objects no image row names, unfinished uploads and stale staged copies,
    once past the grace.

    An object is only an orphan after ``IMAGESVC_ORPHAN_GRACE`` seconds untouched, and never
    while the capture or import that writes it is unsettled: a long copy's file keeps the
    time of its last write while it is hashed, synced and uploaded or renamed into place.
    The store's listing is walked a page at a time and its names checked against the image
    rows in batches (by image id, the key), so the table is never read whole.
    """
    store = services.store
    cutoff = time.time() - services.settings.orphan_grace
    with services.database.reading() as session:
        busy = copies_in_progress(session)
    old = (item.name for item in store.listing() if item.modified < cutoff)
    removed = []
    for names in _batches(old, ORPHAN_BATCH):
        for name in _unowned(services, names, busy.image_ids):
            store.remove(name)
            removed.append(name)
    grace = services.settings.orphan_grace
    removed += store.remove_stale_uploads(grace, busy.image_ids | busy.job_ids)
    if removed:
        log.warning("removed orphaned files from the store", extra={"files": removed})
    return removed


ORPHAN_BATCH = 500  # store names checked against the image rows per query


def _batches(names: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(names)
    while batch := list(islice(iterator, size)):
        yield batch


def _unowned(services: Services, names: list[str], busy: frozenset[str]) -> list[str]:
    """The names no image row names, but those of unsettled copies (``busy`` images)."""
    owners = {owner_of(name) for name in names}
    stmt = select(Image.file_name).where(Image.image_id.in_(owners), Image.file_name.is_not(None))
    with services.database.reading() as session:
        owned = set(session.scalars(stmt))
    return [name for name in names if name not in owned and owner_of(name) not in busy]


def _free_files(services: Services) -> int:
    with services.database.reading() as session:
        held = files_of_ceased(session)
    for item in held:
        services.store.remove(item.file_name)
        with services.database.transaction() as session:
            forget_file(session, item.image_id)
    return len(held)
