"""No orphaned files after any crash: files no image row owns go once past a grace period.

``remove_orphans`` is what the periodic image sweep runs; it is called directly here
with a short grace, so that only files these tests aged are old enough to go. The
module has a deployment of its own, so no other module's files are in its store.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from imagesvc.bootstrap import Services, services_for
from imagesvc.settings import Settings
from models.db import Database
from models.job_failures import FailedRun, fail_and_give_back
from models.jobs import claim_job, requeue_job
from models.states import JobAction
from models.tables import Image, Job
from tests.support.disks import stored_file, stored_files
from tests.support.tenants import Tenant
from workers.image_sweep import remove_orphans

# It removes files from the store, and ages files there: the store must be its own.
pytestmark = pytest.mark.own_deployment

GRACE = 60.0
# Older than GRACE but younger than the deployment's own orphan_grace (an hour), so
# only the sweep a test calls takes these files.
OLD = 5 * GRACE


@pytest.fixture
def context(service_settings: Settings, database: Database) -> Iterator[Services]:
    settings = service_settings.model_copy(update={"orphan_grace": GRACE})
    with services_for(settings) as services:
        yield services


def make_file(path: Path, age: float = 0.0) -> Path:
    """A file with some bytes, last modified ``age`` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(4096))
    set_age(path, age)
    return path


def set_age(path: Path, age: float) -> None:
    then = time.time() - age
    os.utime(path, (then, then))


def stray_name(suffix: str = "raw") -> str:
    return f"img-stray{secrets.token_hex(4)}.1.{suffix}"


def test_a_stray_file_older_than_the_grace_is_removed_and_reported(
    context: Services,
) -> None:
    image_dir = context.settings.image_dir
    old = make_file(image_dir / stray_name(), age=OLD)
    old_qcow2 = make_file(image_dir / stray_name("qcow2"), age=GRACE + 5)
    young = make_file(image_dir / stray_name())
    almost = make_file(image_dir / stray_name(), age=GRACE - 20)
    try:
        removed = remove_orphans(context)
        assert old.name in removed and old_qcow2.name in removed, removed
        assert not old.exists() and not old_qcow2.exists()
        assert young.exists() and almost.exists(), "a file younger than the grace went"
        assert young.name not in removed and almost.name not in removed
        assert len(removed) == len(set(removed))
        # Nothing of ours is left to remove: a second pass does not report them again.
        again = remove_orphans(context)
        assert {old.name, old_qcow2.name, young.name, almost.name}.isdisjoint(again), again
    finally:
        young.unlink(missing_ok=True)
        almost.unlink(missing_ok=True)


async def test_a_file_an_image_row_owns_stays_however_old(
    tenant: Tenant, raw_disk: Path, context: Services, database: Database
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    owned = stored_file(context.settings.image_dir, image_id)
    with database.reading() as session:
        assert session.scalar(select(Image.file_name).where(Image.image_id == image_id)) == (
            owned.name
        )
    set_age(owned, 30 * 86400)
    stray = make_file(context.settings.image_dir / stray_name(), age=OLD)

    removed = remove_orphans(context)
    assert stray.name in removed and not stray.exists(), removed
    assert owned.name not in removed
    assert stored_file(context.settings.image_dir, image_id) == owned
    assert owned.read_bytes() == raw_disk.read_bytes()
    assert (await tenant.image(image_id))["status"] == "available"


def test_an_old_partial_copy_is_removed_and_a_young_one_stays(context: Services) -> None:
    partials = context.settings.image_dir / ".partial"
    old = make_file(partials / f"j-stale{secrets.token_hex(4)}.1.part", age=OLD)
    young = make_file(partials / f"j-busy{secrets.token_hex(4)}.1.part")
    try:
        removed = remove_orphans(context)
        assert f".partial/{old.name}" in removed and not old.exists(), removed
        assert young.exists(), "a copy in progress was removed"
    finally:
        young.unlink(missing_ok=True)


async def test_a_retried_capture_leaves_one_file_and_none_of_the_dead_runs(
    tenant: Tenant, raw_disk: Path, services: Services, service_settings: Settings
) -> None:
    image_dir = service_settings.image_dir
    database = services.database
    job_id, image_id = tenant.record_capture(raw_disk)
    # Attempt 1 is claimed by a worker that then dies mid-copy, leaving its files.
    with database.transaction() as session:
        claimed = claim_job(session, job_id, "dead-worker")
        assert claimed is not None and claimed.attempts == 1
    staging = services.store.staging_dir()
    dead_partial = make_file(staging / ".partial" / f"{job_id}.1.part")
    dead_staged = make_file(staging / f"{image_id}.1.raw")
    dead_copy = make_file(image_dir / f"{image_id}.1.raw")
    # The sweep gives the lost run's job back to the queue and sends it again.
    with database.transaction() as session:
        assert requeue_job(session, job_id, 1)
    assert services.job_queue.send(job_id)

    job = await tenant.wait_job(job_id)
    assert job["status"] == "successful", job
    with database.reading() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.attempts == 2, "attempt 2 should have run the job"
        image = session.get(Image, image_id)
        assert image is not None and image.file_name == f"{image_id}.2.raw"
    stored = stored_file(image_dir, image_id)
    assert stored.name == f"{image_id}.2.raw", stored_files(image_dir, image_id)
    assert stored.read_bytes() == raw_disk.read_bytes()
    assert not dead_copy.exists(), "attempt 1's copy was left behind"
    assert not dead_partial.exists(), "attempt 1's partial file was left behind"
    assert not dead_staged.exists(), "attempt 1's staged copy was left behind"
    assert not [p for p in staging.rglob("*") if p.is_file()], "a staged file was left"
    assert (await tenant.image(image_id))["status"] == "available"


def test_files_of_an_unsettled_capture_stay_however_old_and_go_once_it_fails(
    tenant: Tenant, raw_disk: Path, context: Services
) -> None:
    # A long copy's files keep the time of their last write while they are hashed,
    # synced and renamed into place: age alone must not make them orphans.
    job_id, image_id = tenant.record_capture(raw_disk)
    with context.database.transaction() as session:
        assert claim_job(session, job_id, "busy-worker") is not None
    image_dir = context.settings.image_dir
    partial = make_file(image_dir / ".partial" / ".partial" / f"{job_id}.1.part", age=OLD)
    staged = make_file(image_dir / ".partial" / f"{image_id}.1.raw", age=OLD)
    published = make_file(image_dir / f"{image_id}.1.raw", age=OLD)

    assert remove_orphans(context) == []
    assert partial.exists() and staged.exists() and published.exists()

    failed = FailedRun(job_id, JobAction.CAPTURE_INSTANCE, [image_id], 1, "Test", "gave up")
    with context.database.transaction() as session:
        assert fail_and_give_back(session, failed)
    removed = remove_orphans(context)
    expected = [f".partial/.partial/{partial.name}", f".partial/{staged.name}", published.name]
    assert sorted(removed) == sorted(expected), removed
