"""A system-image import runs through the job pipeline, so a lost import is rescued."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from imagesvc.bootstrap import Services
from models.images import SystemImageSpec, import_image
from models.jobs import claim_job
from models.tables import Job, utcnow
from tests.conftest import Tenant
from workers.job_sweep import rescue_lost


async def test_an_import_whose_worker_died_is_rescued_by_the_sweep(
    tenant: Tenant, raw_disk: Path, services: Services
) -> None:
    spec = SystemImageSpec(zone="ac1", image_name="debian-rescued", os_family="debian")
    with services.database.transaction() as session:
        recorded = import_image(session, spec, str(raw_disk))
        job_id, image_id = recorded.job.job_id, recorded.image.image_id
    # A worker claimed it and died: its heartbeat stopped long ago.
    with services.database.transaction() as session:
        assert claim_job(session, job_id, "dead-worker") is not None
        silent_since = utcnow() - timedelta(minutes=10)
        session.execute(update(Job).where(Job.job_id == job_id).values(heartbeat_at=silent_since))

    assert rescue_lost(services) == [job_id]

    job = await _finished(services, job_id)
    assert (job.status, job.attempts) == ("successful", 2)
    image = await tenant.image(image_id)  # public: every tenant sees it
    assert (image["status"], image["provider"], image["visibility"]) == (
        "available",
        "system",
        "public",
    )


async def _finished(services: Services, job_id: str, timeout: float = 60.0) -> Job:
    """Poll the job row as the operator's import command does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with services.database.reading() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.status in ("successful", "failed", "done with failure"):
                return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"import job {job_id} did not finish")
