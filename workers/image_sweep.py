"""The image sweep: cease deleted images past retention, free their files, purge old rows,
remove orphaned files and forget expired request ids."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select

from imagesvc.bootstrap import Services
from models.client_requests import forget_expired
from models.image_lifecycle import cease_expired, files_of_ceased, forget_file, purge_ceased
from models.jobs import copies_in_progress
from models.sweep_lock import sweep_lock
from models.tables import Image

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
    """Remove store files no image row names, and stale partial copies, once past the grace.

    A file is only an orphan after ``IMAGESVC_ORPHAN_GRACE`` seconds untouched, and never
    while the capture or import that writes it is unsettled: a long copy's file keeps the
    time of its last write while it is hashed, synced and renamed into place.
    """
    image_dir = services.settings.image_dir
    cutoff = time.time() - services.settings.orphan_grace
    with services.database.reading() as session:
        owned = set(session.scalars(select(Image.file_name).where(Image.file_name.is_not(None))))
        busy = copies_in_progress(session)
    candidates = [
        p
        for p in image_dir.iterdir()
        if p.is_file() and p.name not in owned and _owner(p) not in busy.image_ids
    ]
    partials = image_dir / ".partial"
    if partials.is_dir():
        candidates += [
            p for p in partials.iterdir() if p.is_file() and _owner(p) not in busy.job_ids
        ]
    removed = [str(p.relative_to(image_dir)) for p in candidates if _remove_if_older(p, cutoff)]
    if removed:
        log.warning("removed orphaned files from the store", extra={"files": removed})
    return removed


def _owner(path: Path) -> str:
    """The image (``<image>.<attempt>.<format>``) or job (``<job>.<attempt>.part``) a file is of."""
    return path.name.split(".", 1)[0]


def _remove_if_older(path: Path, cutoff: float) -> bool:
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _free_files(services: Services) -> int:
    with services.database.reading() as session:
        held = files_of_ceased(session)
    for item in held:
        (services.settings.image_dir / item.file_name).unlink(missing_ok=True)
        with services.database.transaction() as session:
            forget_file(session, item.image_id)
    return len(held)
